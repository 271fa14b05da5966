"""DAS's learned interventions: what a run learned (`DASResult`) and `interventions.pt` on disk (plain tensors,
strings and numbers, loadable with weights_only=True), written by a run and read back by `method.load`."""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtyping import Float
from torch import Tensor

from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.methods.das.config import DASTraining as Training


@dataclass
class DASResult:
    """IIA on the test pairs and the final training loss per location; the learned parameters (plain tensors)
    per location; `variants`: the controls and hypotheses fitted beside it, by name."""

    locations: list[Location]
    iia: Float[Tensor, " point"]
    loss: Float[Tensor, " point"]
    states: list[dict[str, Tensor]]
    variants: dict[str, "DASResult"] = field(default_factory=dict)


def location_key(loc: Location) -> str:
    """A location as text, e.g. `resid_post|1|END|` or `z|1|17|0,2` (stream, layer, positions, heads)."""
    positions = ",".join(map(str, loc.positions)) if isinstance(loc.positions, tuple) else str(loc.positions)
    heads = "" if loc.heads is None else ",".join(map(str, loc.heads))
    return f"{loc.stream}|{loc.layer}|{positions}|{heads}"


def interventions_file(locations: list[Location], result: DASResult, training: Training) -> dict:
    """What `interventions.pt` holds: plain tensors, strings and numbers (loadable with weights_only=True)."""
    return {
        "intervention": training.intervention,
        "low_rank_dimension": training.low_rank_dimension,
        **({"featurizer": training.featurizer} if training.featurizer != "rotation" else {}),
        "locations": [location_key(loc) for loc in locations],
        "states": result.states,
    }


def load_interventions(path: str, locations: list[Location], training: Training, widths: list[int | None] | None = None) -> list[dict[str, Tensor]]:
    """The saved parameters of each location, from a run dir or its interventions.pt; every location of this
    sweep must be there, trained with the same intervention (and, given `widths`, of each location's width). A
    file that is missing, damaged or of another kind ends in one line; `plan.prepare` calls this before the
    weights load."""
    from pathlib import Path

    from circuitlab.errors import CircuitlabError
    from circuitlab.methods.das.export import read_export
    from circuitlab.storage import load_tensors

    given = Path(path).expanduser()
    file = given / "interventions.pt" if given.is_dir() else given
    exported = None if file.is_file() and file.name == "interventions.pt" else read_export(given)
    if exported is not None:  # a MIB export or a pyvene file (export.py)
        return _checked(exported, path, given, locations, training, widths, f"method.load={path}: ")
    if not file.is_file():
        raise ConfigError("method.load", path, "a run dir of method=das holding interventions.pt, or that file "
                          f"({'it holds no interventions.pt' if given.is_dir() else 'no such file'}; vanilla runs save none)")
    named = f"method.load={path}: " + (f"its {file.name} is " if file != given else "")
    try:
        data = load_tensors(file)
    except Exception as err:  # empty, truncated, garbage or unsafe: whatever torch.load raises
        import pickle

        reason = ("garbage, or objects other than tensors" if isinstance(err, pickle.UnpicklingError)
                  else (str(err).strip().splitlines() or [type(err).__name__])[0][:120] or type(err).__name__)
        raise CircuitlabError(f"{named}not a readable torch file (empty, truncated or damaged: {reason})") from None
    return _checked(data, path, file, locations, training, widths, named)


def _checked(data, path: str, file, locations: list[Location], training: Training, widths: list[int | None] | None, named: str) -> list[dict[str, Tensor]]:
    """The saved states of `locations`, checked: the file's kind, intervention, locations and basis shapes."""
    from circuitlab.errors import CircuitlabError

    keys = ("intervention", "low_rank_dimension", "locations", "states")
    what = f"{named}not the interventions.pt of a method=das run"
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise CircuitlabError(f"{what} (a dict with {', '.join(keys)}; it holds {type(data).__name__}"
                              f"{' with ' + ', '.join(map(str, list(data)[:6])) if isinstance(data, dict) else ''})")
    states = data["states"]
    if not isinstance(data["locations"], list) or not isinstance(states, list) or len(states) != len(data["locations"]):
        raise CircuitlabError(f"{what} (its locations and states are not two lists of one length)")
    rotation = training.intervention == "das" and training.featurizer == "rotation"
    if data["intervention"] != training.intervention or data["low_rank_dimension"] != training.low_rank_dimension and rotation:
        raise ConfigError("method.intervention", training.intervention,
                          f"{data['intervention']} with low_rank_dimension {data['low_rank_dimension']} (what {file} holds)")
    if data.get("featurizer", "rotation") != training.featurizer:
        raise ConfigError("method.featurizer", training.featurizer, f"{data.get('featurizer', 'rotation')} (what {file} holds)")
    by_key = dict(zip(map(str, data["locations"]), states))
    missing = [location_key(loc) for loc in locations if location_key(loc) not in by_key]
    if missing:
        raise ConfigError("method.load", path, f"a run with these locations (missing {', '.join(missing[:3])})")
    out = [by_key[location_key(loc)] for loc in locations]
    k = training.low_rank_dimension
    for loc, state, width in zip(locations, out, widths or [None] * len(out)):
        basis = state.get("basis") if isinstance(state, dict) else None
        ok = isinstance(basis, Tensor) and basis.ndim == 2
        if ok and width is not None:
            ok = tuple(basis.shape) == (width, k if rotation else width)
        if ok and training.intervention == "boundless":
            ok = isinstance(state.get("boundary"), Tensor) and "temperature" in state
        if not ok:
            raise CircuitlabError(f"{what}: the state of {location_key(loc)} is not a basis for this model "
                                  f"({'a ' + 'x'.join(map(str, basis.shape)) + ' basis' if isinstance(basis, Tensor) else 'no basis'}"
                                  f"{f', {width} wide expected' if width is not None else ''})")
    return out
