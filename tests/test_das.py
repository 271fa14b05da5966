"""Interchange interventions and DAS: vanilla against a direct hook, DAS where toy-ioi carries the IO name and
where it cannot, saved interventions reload to the same IIA, and the counterfactual data."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.methods.das.compute import Training, das_sweep, load_interventions, interventions_file
from circuitlab.tasks import ioi_counterfactual as icf
from circuitlab.tasks.ioi import NAMES

NAME_TASK = dict(variable="name", n_prompts=60, n_train=120, base_patterns=["ABB", "BAB"], source_patterns=None, templates="all")


def counterfactual_splits(toy_model, **overrides):
    cfg = OmegaConf.create({**NAME_TASK, **overrides})
    tokenizer = toy_model.tokenizer
    bos = tokenizer.bos_token_id
    return icf.build_split(cfg, tokenizer, [bos], bos, 0, "train"), icf.build_split(cfg, tokenizer, [bos], bos, 0, "test")


def test_position_labels_follow_the_source_pattern(toy_model):
    train, test = counterfactual_splits(toy_model, variable="position")
    tok = toy_model.tokenizer
    for i in range(train.n_pairs):
        base, source = train.corrupted_texts[i], train.clean_texts[i]
        label = tok.convert_ids_to_tokens([int(train.answer_tokens[i])])[0]
        first_base, first_source = base.split()[1], source.split()[1]
        same_pattern = base == source
        assert label != tok.convert_ids_to_tokens([int(train.wrong_tokens[i])])[0]
        if same_pattern:  # ABB -> ABB: nothing changes, the label is the base's IO
            assert first_base == first_source
    assert (test.clean_tokens != test.corrupted_tokens).any(1).all()  # test pairs always swap the pattern


def test_name_labels_are_the_sources_io_and_splits_are_disjoint(toy_model):
    train, test = counterfactual_splits(toy_model)
    tok = toy_model.tokenizer
    for i in range(test.n_pairs):
        label = tok.convert_ids_to_tokens([int(test.answer_tokens[i])])[0].strip()
        assert label in test.clean_texts[i] and label not in test.corrupted_texts[i]
        assert label in NAMES[: icf.NAME_SET]
    train_templates = {t.split(",")[0].split()[0] for t in train.corrupted_texts}
    test_templates = {t.split(",")[0].split()[0] for t in test.corrupted_texts}
    assert not train_templates & test_templates


def test_vanilla_iia_equals_a_direct_hook(toy_model):
    train, test = counterfactual_splits(toy_model)
    locations = [Location("resid_post", layer, "END", None, "", None) for layer in (0, 1)] + [Location("z", 1, "END", (2,), "", 2)]
    ours = das_sweep(toy_model, train, test, locations, Training(intervention="vanilla"), progress=False).iia
    _, source = toy_model.run_with_cache(test.clean_tokens)
    rows, end = torch.arange(test.n_pairs), test.named_positions["END"]
    expected = []
    for loc in locations:
        name = f"blocks.{loc.layer}.hook_resid_post" if loc.stream == "resid_post" else f"blocks.{loc.layer}.attn.hook_z"

        def swap(act, hook, loc=loc, name=name):
            act = act.clone()
            if loc.heads is None:
                act[rows, end] = source[name][rows, end]
            else:
                act[rows, end, loc.head] = source[name][rows, end, loc.head]
            return act

        logits = toy_model.run_with_hooks(test.corrupted_tokens, fwd_hooks=[(name, swap)])[rows, test.final_positions]
        expected.append((logits.argmax(-1) == test.answer_tokens).float().mean())
    torch.testing.assert_close(ours, torch.stack(expected))
    assert ours[1] > 0.9  # the final residual stream carries the source's IO name


def test_das_finds_the_name_where_it_is_and_not_before_the_names(toy_model, tmp_path):
    train, test = counterfactual_splits(toy_model)
    locations = [Location("resid_post", 1, "END", None, "", None), Location("resid_post", 1, 1, None, "", None)]
    training = Training(intervention="das", low_rank_dimension=20)
    result = das_sweep(toy_model, train, test, locations, training, progress=False)
    assert result.iia[0] > 0.9  # the model's output carries the IO name at the final position
    assert result.iia[1] < 0.05  # position 1 comes before any name: nothing to swap (the base answer stays)
    for state in result.states:
        basis = state["basis"]
        torch.testing.assert_close(basis.T @ basis, torch.eye(20), atol=1e-4, rtol=0)
    path = tmp_path / "interventions.pt"
    torch.save(interventions_file(locations, result, training), path)
    saved = load_interventions(str(path), locations, training)
    reloaded = das_sweep(toy_model, train, test, locations, training, progress=False, saved=saved)
    torch.testing.assert_close(reloaded.iia, result.iia)


def test_boundless_learns_a_boundary_and_reloads(toy_model, tmp_path):
    train, test = counterfactual_splits(toy_model)
    locations = [Location("resid_post", 1, "END", None, "", None)]
    training = Training(intervention="boundless", epochs=4)
    result = das_sweep(toy_model, train, test, locations, training, progress=False)
    assert result.iia[0] > 0.9
    assert 0 < float(result.states[0]["boundary"]) <= 1
    torch.save(interventions_file(locations, result, training), tmp_path / "interventions.pt")
    reloaded = das_sweep(toy_model, train, test, locations, training, progress=False, saved=load_interventions(str(tmp_path), locations, training))
    torch.testing.assert_close(reloaded.iia, result.iia)


def test_bad_das_input(toy_model, tmp_path):
    train, test = counterfactual_splits(toy_model)
    wide = Training(intervention="das", low_rank_dimension=65)
    with pytest.raises(ConfigError, match="method.low_rank_dimension=65"):
        das_sweep(toy_model, train, test, [Location("resid_post", 1, "END", None, "", None)], wide, progress=False)
    with pytest.raises(ConfigError, match="method.load"):
        load_interventions(str(tmp_path), [], Training())
    with pytest.raises(ConfigError, match="task.source_patterns=CDD"):
        icf.validate_config(OmegaConf.create({**NAME_TASK, "variable": "position", "source_patterns": ["CDD"]}))
    with pytest.raises(ConfigError, match="task.variable=gender"):
        icf.validate_config(OmegaConf.create({**NAME_TASK, "variable": "gender"}))


def test_run_writes_iia_and_reloads_interventions(tmp_path):
    from circuitlab import cli
    from circuitlab.results import load_tensors, read_results
    from circuitlab.run import run_experiment

    overrides = ["+experiment=ioi_name_das", "sweep.layers=[1]", "sweep.positions=[S2,END]", "task.n_train=60", "task.n_prompts=40", "progress=false"]
    run_experiment(cli.compose_config(overrides), tmp_path / "trained")
    trained = read_results(tmp_path / "trained")
    iia = trained[trained["metric"] == "iia"].set_index("position")["value"]
    assert iia["END"] > 0.8 and iia["S2"] < 0.2
    assert set(trained["metric"]) == {"iia", "loss"}
    saved = load_tensors(tmp_path / "trained" / "interventions.pt")
    assert saved["locations"] == ["resid_post|1|S2|", "resid_post|1|END|"] and saved["states"][0]["basis"].shape == (64, 20)
    run_experiment(cli.compose_config([*overrides, f"method.load={tmp_path / 'trained'}"]), tmp_path / "loaded")
    loaded = read_results(tmp_path / "loaded")
    torch.testing.assert_close(torch.tensor(loaded[loaded["metric"] == "iia"]["value"].values), torch.tensor(iia.values))
    assert (tmp_path / "trained" / "figures" / "iia_heatmap.png").exists()


def test_head_weights_split_the_basis_by_head(toy_model):
    from circuitlab.methods.das.compute import DASResult, head_weights_frame

    basis = torch.arange(64 * 2, dtype=torch.float32).view(64, 2)
    result = DASResult([Location("z", 1, "END", None, "", None)], torch.zeros(1), torch.zeros(1), [{"basis": basis}])
    frame = head_weights_frame(result.locations, result, n_heads=4, d_head=16)
    assert len(frame) == 128 and sorted(set(frame["head"])) == [0, 1, 2, 3]
    assert frame[frame["head"] == 2]["weight"].tolist() == basis[32:48].flatten().tolist()


@pytest.mark.parametrize("intervention", ["das", "boundless"])
def test_position_sets_and_head_groups_train_and_match_vanilla_at_full_rank(toy_model, intervention):
    """Locations with several cells per prompt (every position) or several heads go through the general path; a
    full-rank DAS basis swaps everything, so it must equal the vanilla swap there."""
    train, test = counterfactual_splits(toy_model)
    locations = [Location("z", 1, "END", (0, 2), "", None), Location("z", 1, "all", (1, 3), "", None)]
    result = das_sweep(toy_model, train, test, locations, Training(intervention=intervention, epochs=2), progress=False)
    assert torch.isfinite(result.loss).all() and (result.loss > 0).all()
    n_test = test.n_pairs  # IIA is a share of test pairs: a multiple of 1 / n_test
    torch.testing.assert_close(result.iia * n_test, (result.iia * n_test).round())
    full = [{"basis": torch.eye(32)} for _ in locations]
    swapped = das_sweep(toy_model, train, test, locations, Training(intervention="das", low_rank_dimension=32), progress=False, saved=full)
    vanilla = das_sweep(toy_model, train, test, locations, Training(intervention="vanilla"), progress=False)
    torch.testing.assert_close(swapped.iia, vanilla.iia)
