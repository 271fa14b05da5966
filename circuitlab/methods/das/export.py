"""DAS's learned interventions in forms other tools read (`method.export`), each loadable back by `method.load`.

- `mib`: MIB's causal-variable featurizers, as its `verify_submission.py` walks them and its
  `Featurizer.load_modules` reads them: `mib/<TASK>/<MODEL>/<VARIABLE>/<Unit>_featurizer`, `_inverse_featurizer`
  (torch files {model_info, state_dict}: a SubspaceFeaturizerModule / SubspaceInverseFeaturizerModule pair around
  one orthogonally parametrised rotation, its `weight` the learned width x k basis) and `_indices` (one line: the
  features swapped, a JSON list). Units are named as MIB names them: `ResidualStream(Layer-L,Token-P)` for the
  block output, `AttentionHead(Layer-L,Head-H,Token-P)` for one head's z; other streams as
  `Circuitlab(Stream-S,Layer-L,Token-P[,Heads-..])`. TASK / MODEL / VARIABLE are MIB's names where circuitlab's task,
  model and variable are one of MIB's (ioi_task, the Hugging Face class, output_position / output_token), else
  circuitlab's. `mib/circuitlab_mib.json` maps each unit to its location and says what each token position is
  (MIB's checker refuses a submission's .py that defines no Featurizer subclass, so the positions are described,
  not shipped as code). Boundless DAS exports its full rotation with the features its mask swaps more than half of.
- `pyvene`: `pyvene_interventions.pt`, plain tensors and strings: per location the pyvene intervention type and
  component, `rotate_layer` (pyvene's `rotate_layer.weight`: set it on LowRankRotatedSpaceIntervention(embed_dim,
  low_rank_dimension) or BoundlessRotatedSpaceIntervention(embed_dim)) and, for Boundless DAS,
  `intervention_boundaries` and `temperature`.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from circuitlab.errors import CircuitlabError
from circuitlab.locations import Location
from circuitlab.methods.das.mask import swapped

FORMATS = ("mib", "pyvene")
MIB_DIR = "mib"
MIB_MANIFEST = "circuitlab_mib.json"
PYVENE_FILE = "pyvene_interventions.pt"
PYVENE_FORMAT = "circuitlab-das-pyvene/1"
MIB_TASKS = {"ioi_counterfactual": "ioi_task"}
MIB_VARIABLES = {("ioi_counterfactual", "position"): "output_position", ("ioi_counterfactual", "name"): "output_token"}
PYVENE_COMPONENTS = {"resid_pre": "block_input", "resid_post": "block_output", "attn_out": "attention_output", "mlp_out": "mlp_output",
                     "z": "head_attention_value_output", "mlp_post": "mlp_activation"}
POSITION_NOTES = {"END": "the last token of the prompt", "IO": "the indirect object's name in the first clause",
                  "S1": "the subject's first mention (first clause)", "S2": "the subject's second mention"}


def token_id(positions) -> str:
    return "+".join(map(str, positions)) if isinstance(positions, tuple) else str(positions)


def mib_unit(loc: Location) -> str:
    """MIB's name for the unit at `loc` (its files are `<unit>_featurizer`, ...)."""
    token = token_id(loc.positions)
    if loc.stream == "resid_post":
        return f"ResidualStream(Layer-{loc.layer},Token-{token})"
    if loc.stream == "z" and loc.heads is not None and len(loc.heads) == 1:
        return f"AttentionHead(Layer-{loc.layer},Head-{loc.heads[0]},Token-{token})"
    heads = "" if loc.heads is None else ",Heads-" + "+".join(map(str, loc.heads))
    return f"Circuitlab(Stream-{loc.stream},Layer-{loc.layer},Token-{token}{heads})"


def swapped_features(state: dict[str, Tensor], featurizer: str = "rotation") -> list[int]:
    """The features (rotated dimensions) an intervention swaps: every column of a DAS basis; for Boundless DAS those
    its mask (at its last temperature) takes more than half from the source; for a mask, the stream's dimensions it
    swaps."""
    width, k = state["basis"].shape
    if featurizer == "mask":
        return swapped(state["basis"])
    if "boundary" not in state:
        return list(range(k))
    position = torch.arange(width, dtype=torch.float64)
    temperature, edge = float(state["temperature"]), float(state["boundary"]) * width
    mask = torch.sigmoid(position / temperature) * torch.sigmoid((edge - position) / temperature)
    return [i for i in range(width) if float(mask[i]) > 0.5]


class _Rotate(nn.Module):
    """pyvene's LowRankRotateLayer's parameters (`weight`, width x k), for a state dict MIB's loader accepts."""

    def __init__(self, basis: Tensor):
        super().__init__()
        self.weight = nn.Parameter(basis.detach().clone(), requires_grad=False)


def rotate_state(basis: Tensor) -> dict[str, Tensor]:
    """The state dict of a featurizer module holding `rotate`, an orthogonally parametrised layer whose weight is
    `basis` (torch's parametrisation completes it from the global random state: forked and seeded, deterministic)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        holder = nn.Module()
        holder.rotate = orthogonal(_Rotate(basis.float()))
    return {k: v.detach().clone() for k, v in holder.state_dict().items()}


def mib_names(task: str, variable: str | None, model_class: str) -> tuple[str, str, str]:
    return MIB_TASKS.get(task, task), model_class, MIB_VARIABLES.get((task, variable), variable or "variable")


def mib_files(locations: list[Location], keys: list[str], states: list[dict], intervention: str, low_rank_dimension: int, task: str,
              variable: str | None, model_class: str, featurizer: str = "rotation") -> tuple[dict[str, dict], dict[str, str], dict]:
    """(torch files, one-line text files, the manifest) of the MIB export, by path under the run dir (`keys`: the
    locations as interventions.pt names them). A mask is MIB's identity featurizer with the masked dimensions as its
    indices."""
    folder = "/".join((MIB_DIR, *mib_names(task, variable, model_class)))
    tensors, texts, units = {}, {}, {}
    for loc, key, state in zip(locations, keys, states):
        unit = mib_unit(loc)
        basis = state["basis"]
        features = swapped_features(state, featurizer)
        if featurizer == "mask":
            info = {"featurizer_class": "IdentityFeaturizerModule", "inverse_featurizer_class": "IdentityInverseFeaturizerModule",
                    "n_features": int(basis.shape[0]), "additional_config": {}}
            rotate = {}
        else:
            info = {"featurizer_class": "SubspaceFeaturizerModule", "inverse_featurizer_class": "SubspaceInverseFeaturizerModule",
                    "n_features": int(basis.shape[1]),
                    "additional_config": {"rotation_matrix": basis.detach().float().clone(), "requires_grad": False}}
            rotate = rotate_state(basis)
        tensors[f"{folder}/{unit}_featurizer"] = {"model_info": info, "state_dict": rotate}
        tensors[f"{folder}/{unit}_inverse_featurizer"] = {"model_info": info, "state_dict": {k: v.clone() for k, v in rotate.items()}}
        texts[f"{folder}/{unit}_indices"] = json.dumps(features)
        units[unit] = {"location": key, "stream": loc.stream, "layer": loc.layer, "token_position": token_id(loc.positions), "width": int(basis.shape[0]),
                       "heads": None if loc.heads is None else list(loc.heads), "features": len(features),
                       **({"boundary": float(state["boundary"]), "temperature": float(state["temperature"])} if "boundary" in state else {})}
    positions = {token_id(loc.positions) for loc in locations}
    manifest = {"format": "mib-causal-variable featurizers (circuitlab DAS export)", "intervention": intervention, "featurizer": featurizer,
                "low_rank_dimension": low_rank_dimension, "folder": folder,
                "task": task, "variable": variable, "model_class": model_class, "units": units,
                "token_positions": {p: POSITION_NOTES.get(p, f"token index {p}" if p != "all" else "every position") for p in sorted(positions)}}
    return tensors, texts, manifest


def pyvene_file(locations: list[Location], keys: list[str], states: list[dict], intervention: str, low_rank_dimension: int, meta: dict,
                featurizer: str = "rotation") -> dict:
    """The plain .pt for pyvene: per location (`keys`: as interventions.pt names them) its component, unit, positions,
    the rotation and the boundary. A mask is the low-rank rotation whose columns are the masked dimensions' unit
    vectors (the same swap)."""
    kind = "BoundlessRotatedSpaceIntervention" if intervention == "boundless" else "LowRankRotatedSpaceIntervention"
    entries = []
    for loc, key, state in zip(locations, keys, states):
        basis = state["basis"].detach().float().clone()
        if featurizer == "mask":
            basis = basis[:, swapped(basis)]
        entries.append({
            "location": key, "stream": loc.stream, "layer": loc.layer, "positions": token_id(loc.positions),
            "heads": [] if loc.heads is None else list(loc.heads), "pyvene_component": PYVENE_COMPONENTS.get(loc.stream, loc.stream),
            "unit": "h.pos" if loc.heads is not None else "pos", "intervention_type": kind, "embed_dim": int(basis.shape[0]),
            "low_rank_dimension": int(basis.shape[1]), "rotate_layer": basis,
            **({"intervention_boundaries": state["boundary"].detach().float().reshape(1).clone(),
                "temperature": state["temperature"].detach().float().clone()} if "boundary" in state else {})})
    return {"format": PYVENE_FORMAT, "intervention": intervention, "low_rank_dimension": low_rank_dimension, "featurizer": featurizer, **meta,
            "interventions": entries}


def read_export(path) -> dict | None:
    """An export read back as interventions.pt holds it ({intervention, low_rank_dimension, locations, states}): a MIB
    export dir (its circuitlab_mib.json) or a pyvene file; None when `path` is neither."""
    from pathlib import Path

    from circuitlab.storage import load_tensors

    path = Path(path)
    manifest = path / MIB_MANIFEST if path.is_dir() else None
    if manifest is not None and not manifest.is_file() and (path / MIB_DIR / MIB_MANIFEST).is_file():
        path, manifest = path / MIB_DIR, path / MIB_DIR / MIB_MANIFEST
    if manifest is not None and manifest.is_file():
        return _read_mib(path, json.loads(manifest.read_text(encoding="utf-8")))
    if path.is_file():
        try:
            data = load_tensors(path)
        except Exception:  # noqa: BLE001  not ours: the caller's reader says what it is
            return None
        if isinstance(data, dict) and data.get("format") == PYVENE_FORMAT:
            mask = data.get("featurizer") == "mask"
            states = [{"basis": e["rotate_layer"] @ e["rotate_layer"].T if mask else e["rotate_layer"],
                       **({"boundary": e["intervention_boundaries"].reshape(()), "temperature": e["temperature"]}
                          if "intervention_boundaries" in e else {})} for e in data["interventions"]]
            return {"intervention": data["intervention"], "low_rank_dimension": data["low_rank_dimension"],
                    **({"featurizer": "mask"} if mask else {}), "locations": [e["location"] for e in data["interventions"]], "states": states}
    return None


def _read_mib(root, manifest: dict) -> dict:
    from circuitlab.storage import load_tensors

    folder = root.joinpath(*manifest["folder"].split("/")[1:])  # the folder under mib/
    locations, states = [], []
    for unit, about in manifest["units"].items():
        file = folder / f"{unit}_featurizer"
        try:
            if manifest.get("featurizer") == "mask":  # the identity featurizer: the masked dimensions are its indices
                basis = torch.zeros(about["width"], about["width"])
                for i in json.loads((folder / f"{unit}_indices").read_text()):
                    basis[i, i] = 1.0
            else:
                basis = load_tensors(file)["model_info"]["additional_config"]["rotation_matrix"]
        except Exception as err:  # noqa: BLE001
            raise CircuitlabError(f"method.load={root}: {file.name} is not a readable featurizer ({type(err).__name__})") from None
        state = {"basis": basis}
        if "boundary" in about:
            state.update(boundary=torch.tensor(about["boundary"]), temperature=torch.tensor(about["temperature"]))
        locations.append(about["location"])
        states.append(state)
    return {"intervention": manifest["intervention"], "low_rank_dimension": manifest["low_rank_dimension"], "locations": locations,
            "states": states, **({"featurizer": "mask"} if manifest.get("featurizer") == "mask" else {})}
