"""DAS's exports (`method.export`): the pyvene file loaded into pyvene's own intervention gives the same intervened
logits and IIA on the same pairs; the MIB featurizers pass the checks of MIB's verify_submission.py and load as its
Featurizer.load_modules loads them (both followed here: MIB is not a package), their featurize / inverse pair is our
intervention; each export loads back through `method.load` to the run's IIA."""

from __future__ import annotations

import ast
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from circuitlab.locations import Location
from circuitlab.methods.das import export
from circuitlab.methods.das.compute import Training, das_sweep
from circuitlab.models import loading
from circuitlab.models.loading import EMBEDDED_DIR
from circuitlab.tasks import ioi_counterfactual as icf

MIB_MODULES = ["SubspaceFeaturizerModule", "SubspaceInverseFeaturizerModule", "SAEFeaturizerModule", "SAEInverseFeaturizerModule",
               "IdentityFeaturizerModule", "IdentityInverseFeaturizerModule"]


def mib_verify_directory(path: str) -> tuple[bool, str]:
    """MIB's verify_submission.verify_directory, followed step by step (its file naming, its one-line indices, its
    torch.load of each featurizer and the class names it accepts); torch.load as torch >= 2.6 does it by default."""
    for filename in os.listdir(path):
        valid_index = valid_featurizer = valid_inverse = False
        prefix = "_".join(filename.split("_")[:-1])
        filepath = os.path.join(path, prefix)
        if os.path.exists(filepath + "_indices"):
            with open(filepath + "_indices") as file:
                s = file.readlines()[0]
                valid_index = s == "null" or isinstance(ast.literal_eval(s), list)
        if os.path.exists(filepath + "_featurizer"):
            checkpoint = torch.load(filepath + "_featurizer", map_location="cpu", weights_only=True)
            if "model_info" in checkpoint and "state_dict" in checkpoint:
                valid_featurizer = checkpoint["model_info"].get("featurizer_class") in MIB_MODULES
        if os.path.exists(filepath + "_inverse_featurizer"):
            checkpoint = torch.load(filepath + "_inverse_featurizer", map_location="cpu", weights_only=True)
            if "model_info" in checkpoint and "state_dict" in checkpoint:
                valid_inverse = checkpoint["model_info"].get("inverse_featurizer_class") in MIB_MODULES
        if valid_index and valid_featurizer and valid_inverse:
            return True, "Found valid featurizer modules and indices!"
    return False, "No valid featurizer/inverse featurizer/indices triplet files."


class LowRankRotateLayer(torch.nn.Module):
    """pyvene's LowRankRotateLayer(n, m, init_orth=False) (pyvene.models.layers), used when pyvene is not installed."""

    def __init__(self, n, m):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(n, m), requires_grad=True)


def mib_load_rotation(base_path: str) -> tuple[torch.Tensor, list[int]]:
    """MIB's Featurizer.load_modules for a SubspaceFeaturizerModule: the rotate layer rebuilt from the saved matrix,
    parametrised, its saved state dict loaded strictly into the featurizer and the inverse; (the weight, indices)."""
    try:
        from pyvene.models.layers import LowRankRotateLayer as Layer

        make = lambda n, m: Layer(n, m, init_orth=False)  # noqa: E731
    except ImportError:
        make = LowRankRotateLayer
    featurizer_data = torch.load(base_path + "_featurizer", weights_only=True)
    inverse_data = torch.load(base_path + "_inverse_featurizer", weights_only=True)
    info = featurizer_data["model_info"]
    assert info["featurizer_class"] == "SubspaceFeaturizerModule" and info["inverse_featurizer_class"] == "SubspaceInverseFeaturizerModule"
    rotation = info["additional_config"]["rotation_matrix"]
    layer = make(rotation.shape[0], rotation.shape[1])
    layer.weight.data.copy_(rotation)
    layer = torch.nn.utils.parametrizations.orthogonal(layer)
    layer.requires_grad_(info["additional_config"]["requires_grad"])
    featurizer, inverse = torch.nn.Module(), torch.nn.Module()
    featurizer.rotate = inverse.rotate = layer
    featurizer.load_state_dict(featurizer_data["state_dict"])
    inverse.load_state_dict(inverse_data["state_dict"])
    with open(base_path + "_indices") as f:
        indices = json.load(f)
    return layer.weight.detach(), indices


@pytest.fixture(scope="module")
def plain_toy():
    """toy-ioi without TransformerLens' weight processing: its residual stream is the Hugging Face model's."""
    cfg = OmegaConf.create({"source": "embedded", "name": "toy-ioi", "path": None, "dtype": "float32", "allow_pickle": False,
                            **{flag: False for flag in loading.PROCESSING_FLAGS}})
    model = loading.load_model(cfg)
    task = OmegaConf.create({"variable": "name", "n_prompts": 40, "n_train": 80, "base_patterns": ["ABB", "BAB"], "source_patterns": None,
                             "templates": "all", "source_names": "base"})
    bos = model.tokenizer.bos_token_id
    train, test = (icf.build_split(task, model.tokenizer, [bos], bos, 0, split) for split in ("train", "test"))
    return model, train, test


def test_pyvene_loads_our_rotation_and_gives_the_same_iia(plain_toy, tmp_path):
    pyvene = pytest.importorskip("pyvene")
    from transformers import GPT2LMHeadModel

    model, train, test = plain_toy
    location = [Location("resid_post", 1, "END")]
    training = Training(intervention="das", low_rank_dimension=20)
    result = das_sweep(model, train, test, location, training, progress=False)
    torch.save(export.pyvene_file(location, ["resid_post|1|END|"], result.states, "das", 20, {"model": "toy-ioi"}), tmp_path / export.PYVENE_FILE)
    entry = torch.load(tmp_path / export.PYVENE_FILE, weights_only=True)["interventions"][0]
    assert entry["intervention_type"] == "LowRankRotatedSpaceIntervention" and entry["pyvene_component"] == "block_output"
    hf = GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR / "toy-ioi").eval()
    config = pyvene.IntervenableConfig(model_type=type(hf), intervention_types=pyvene.LowRankRotatedSpaceIntervention,
                                       representations=[pyvene.RepresentationConfig(entry["layer"], entry["pyvene_component"], entry["unit"], 1,
                                                                                    low_rank_dimension=entry["low_rank_dimension"])])
    intervenable = pyvene.IntervenableModel(config, hf)
    intervention = next(iter(intervenable.interventions.values()))
    intervention = intervention[0] if isinstance(intervention, tuple) else intervention
    intervention.rotate_layer.weight = entry["rotate_layer"]
    torch.testing.assert_close(intervention.rotate_layer.weight, entry["rotate_layer"], rtol=0, atol=1e-5)
    where = [[[int(p)] for p in test.named_positions["END"]]]
    with torch.no_grad():
        _, out = intervenable({"input_ids": test.corrupted_tokens}, [{"input_ids": test.clean_tokens}], {"sources->base": (where, where)})
    theirs = out.logits[torch.arange(test.n_pairs), test.final_positions]
    # ours, by a direct hook on the TransformerLens model with the same basis
    name = "blocks.1.hook_resid_post"
    _, cache = model.run_with_cache(test.clean_tokens, names_filter=name)
    rows, end, basis = torch.arange(test.n_pairs), test.named_positions["END"], result.states[0]["basis"]

    def swap(act, hook):
        act = act.clone()
        x = act[rows, end]
        act[rows, end] = x + (cache[name][rows, end] - x) @ basis @ basis.T
        return act

    ours = model.run_with_hooks(test.corrupted_tokens, fwd_hooks=[(name, swap)])[rows, test.final_positions]
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-3)
    iia = float((theirs.argmax(-1) == test.answer_tokens).float().mean())
    assert iia == pytest.approx(float(result.iia[0])) and iia > 0.5


@pytest.mark.parametrize("intervention, featurizer", [("das", "rotation"), ("boundless", "rotation"), ("das", "mask")])
def test_mib_export_passes_its_checker_loads_as_mib_loads_it_and_back(tmp_path, intervention, featurizer):
    """Rotations as MIB's subspace featurizers; a mask as its identity featurizer with the masked dimensions as
    indices."""
    from circuitlab import cli
    from circuitlab.results import read_results
    from circuitlab.run import run_experiment

    overrides = ["+experiment=ioi_name_das", "sweep.layers=[1]", "sweep.positions=[S2,END]", "task.n_train=40", "task.n_prompts=20",
                 "method.epochs=2", "method.low_rank_dimension=4", f"method.intervention={intervention}", f"method.featurizer={featurizer}",
                 "progress=false", "figures=false",
                 "method.export=[mib,pyvene]", "model.fold_ln=false", "model.center_writing_weights=false"]
    run_experiment(cli.compose_config(overrides), tmp_path / "run")
    run = tmp_path / "run"
    manifest = json.loads((run / "mib" / export.MIB_MANIFEST).read_text())
    folder = run / manifest["folder"]
    assert manifest["folder"] == "mib/ioi_task/GPT2LMHeadModel/output_token"  # MIB's names for IOI, the model class, the name variable
    assert mib_verify_directory(str(folder))[0]
    saved = torch.load(run / "interventions.pt", weights_only=True)
    for unit, key in ((u, about["location"]) for u, about in manifest["units"].items()):
        state = saved["states"][saved["locations"].index(key)]
        if featurizer == "mask":
            info = torch.load(folder / f"{unit}_featurizer", weights_only=True)["model_info"]
            assert info["featurizer_class"] == "IdentityFeaturizerModule" and info["inverse_featurizer_class"] == "IdentityInverseFeaturizerModule"
            indices = json.loads((folder / f"{unit}_indices").read_text())
            assert indices == export.swapped_features(state, "mask")
            x, s = torch.randn(5, state["basis"].shape[0]), torch.randn(5, state["basis"].shape[0])
            mib = x.clone()
            mib[:, indices] = s[:, indices]  # the identity featurizer with its indices swapped
            torch.testing.assert_close(mib, x + (s - x) @ state["basis"] @ state["basis"].T)
            continue
        weight, indices = mib_load_rotation(str(folder / unit))
        torch.testing.assert_close(weight, state["basis"], rtol=0, atol=1e-5)
        assert indices == export.swapped_features(state) and (intervention == "boundless" or indices == list(range(4)))
        # MIB's featurize / inverse featurize with the source's features swapped in = our intervention (DAS: exactly)
        x, s = torch.randn(5, weight.shape[0]), torch.randn(5, weight.shape[0])
        f, error = x @ weight, x - (x @ weight) @ weight.T
        f[:, indices] = (s @ weight)[:, indices]
        mib = f @ weight.T + error
        if intervention == "das":
            torch.testing.assert_close(mib, x + (s - x) @ state["basis"] @ state["basis"].T, rtol=1e-4, atol=1e-4)
    iia = read_results(run)
    iia = iia[iia["metric"] == "iia"]["value"].tolist()
    if featurizer == "mask":  # a mask's file is not a rotation's
        from circuitlab.errors import CircuitlabError

        rotation = [o.replace("method.featurizer=mask", "method.featurizer=rotation") for o in overrides[:-3]]
        with pytest.raises(CircuitlabError, match="method.featurizer=rotation"):
            run_experiment(cli.compose_config([*rotation, f"method.load={run}"]), tmp_path / "refused")
    for load in (run / "mib", run / export.PYVENE_FILE):
        run_experiment(cli.compose_config([*overrides[:-3], "model.fold_ln=false", "model.center_writing_weights=false",
                                           f"method.load={load}"]), tmp_path / load.name)
        again = read_results(tmp_path / load.name)
        assert again[again["metric"] == "iia"]["value"].tolist() == pytest.approx(iia, abs=1e-6), load
