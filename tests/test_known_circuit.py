"""The model whose circuit is known by construction: ablations find exactly its circuit."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from circuitlab.circuits import in_circuit, parse_circuit
from circuitlab.locations import Location
from circuitlab.methods.ablation.compute import ablate, ablate_together, make_transform, mean_logit_diff
from circuitlab.models import known_circuit, loading
from circuitlab.tasks import repeat_first

NODES = [Location("z", layer, "all", (head,), "", head) for layer in range(2) for head in range(4)]
NODES += [Location("mlp_out", layer, "all") for layer in range(2)]


@pytest.fixture(scope="module")
def shipped():
    cfg = OmegaConf.create({"source": "embedded", "name": "known-circuit", "path": None, "dtype": "float32", "allow_pickle": False,
                            **{flag: False for flag in loading.PROCESSING_FLAGS}})
    tokenizer = loading.load_tokenizer(cfg)
    pairs = repeat_first.build_pairs(OmegaConf.create({"n_prompts": 48, "length": 4}), tokenizer, [0], 0, seed=1)
    return loading.load_model(cfg), pairs


def test_shipped_weights_are_the_construction(shipped):
    model, _ = shipped
    built = known_circuit.build()
    for name, tensor in built.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_model_solves_its_task(shipped):
    model, pairs = shipped
    rows = torch.arange(pairs.n_pairs)
    clean = model(pairs.clean_tokens)[rows, pairs.final_positions].argmax(-1)
    corrupted = model(pairs.corrupted_tokens)[rows, pairs.final_positions].argmax(-1)
    assert torch.equal(clean, pairs.answer_tokens) and torch.equal(corrupted, pairs.corrupted_answer_tokens)


@pytest.mark.parametrize("mode", ["resample", "mean", "zero"])
def test_in_circuit_nodes_matter_and_the_others_do_not(shipped, mode):
    """Scale 0 (the node's output removed): effect > 0.5 in the circuit, < 0.05 outside, for the logit-difference
    effect and for InterpBench's share of changed outputs."""
    model, pairs = shipped
    circuit = parse_circuit(list(known_circuit.CIRCUIT), 2, 4)
    result = ablate(model, pairs, NODES, mode, [0.0], progress=False, metrics=("logit_diff", "output_change"))[0.0]
    corrupted = mean_logit_diff(model(pairs.corrupted_tokens)[torch.arange(pairs.n_pairs), pairs.final_positions], pairs)
    effect = (result.clean_logit_diff - result.logit_diff) / (result.clean_logit_diff - corrupted)
    for i, loc in enumerate(NODES):
        inside = in_circuit(loc, circuit, 4)
        for name, value in (("effect", effect[i]), ("output_change", result.metrics["output_change"][i])):
            assert (value > 0.5) if inside else (abs(value) < 0.05), (loc, name, float(value))


def test_faithfulness_of_the_circuit(shipped):
    """Ablating every node outside the circuit at once keeps the clean answer; ablating the circuit's nodes at once
    gives the corrupted one."""
    model, pairs = shipped
    circuit = parse_circuit(list(known_circuit.CIRCUIT), 2, 4)
    outside = [loc for loc in NODES if not in_circuit(loc, circuit, 4)]
    inside = [loc for loc in NODES if in_circuit(loc, circuit, 4)]
    rows = torch.arange(pairs.n_pairs)
    clean = mean_logit_diff(model(pairs.clean_tokens)[rows, pairs.final_positions], pairs)
    corrupted = mean_logit_diff(model(pairs.corrupted_tokens)[rows, pairs.final_positions], pairs)
    zero = make_transform("zero", 0.0)
    kept = mean_logit_diff(ablate_together(model, pairs, outside, zero, self_sourced=False), pairs)
    removed = mean_logit_diff(ablate_together(model, pairs, inside, zero, self_sourced=False), pairs)
    assert abs((kept - corrupted) / (clean - corrupted) - 1) < 1e-4
    assert abs((removed - corrupted) / (clean - corrupted)) < 1e-4


def test_ablating_together_one_location_equals_the_sweep(shipped):
    model, pairs = shipped
    for loc in (NODES[0], NODES[8]):
        swept = ablate(model, pairs, [loc], "resample", [0.5], progress=False)[0.5].logit_diff[0].item()
        together = mean_logit_diff(ablate_together(model, pairs, [loc], make_transform("resample", 0.5), self_sourced=False), pairs)
        assert abs(swept - together) < 1e-4


def test_resampling_from_the_dataset(shipped):
    """resample_from=dataset: sources are other prompts of the task with their own labels; the sweep equals a direct
    hook with those sources, and head 0.0 (which the corrupted twins leave unchanged) now matters at scale 1."""
    from circuitlab.methods.ablation.compute import resampled_from_dataset
    from circuitlab.metrics import logit_diff

    model, pairs = shipped
    resampled = resampled_from_dataset(pairs, seed=3)
    assert not (resampled.corrupted_tokens == pairs.clean_tokens).all(1).all()
    flips = resampled.corrupted_answer_tokens != pairs.answer_tokens
    assert 0 < flips.sum() < pairs.n_pairs  # some sources are "yes" prompts, some "no"
    loc = NODES[0]  # head 0.0
    swept = ablate(model, resampled, [loc], "resample", [1.0], progress=False)[1.0].logit_diff[0].item()
    _, source = model.run_with_cache(resampled.corrupted_tokens, names_filter=loc.hook_name)

    def hook(act, hook):
        act = act.clone()
        act[:, :, 0] = source[loc.hook_name][:, :, 0]
        return act

    logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(loc.hook_name, hook)])
    final = logits[torch.arange(pairs.n_pairs), pairs.final_positions]
    expected = logit_diff(final, pairs.answer_tokens, pairs.wrong_tokens).mean().item()
    assert abs(swept - expected) < 1e-4
    unchanged = ablate(model, pairs, [loc], "resample", [1.0], progress=False)[1.0].logit_diff[0].item()
    assert swept < unchanged - 5  # another first symbol breaks the match
