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


GROUPED = [Location("resid_post", layer, position, None, "", None) for layer in (1, 0) for position in ("S2", "END", 3)] + [
    Location("z", 1, "END", (0, 2), "", None), Location("z", 0, "END", (1, 3), "", None)]


@pytest.fixture(scope="module")
def toy_model_float64(toy_model):
    """toy-ioi in float64 (a copy): float rounding no longer hides whether two runs compute the same thing."""
    import copy

    return copy.deepcopy(toy_model).to(torch.float64)


@pytest.mark.parametrize("intervention", ["das", "boundless"])
def test_groups_sized_by_the_budget_train_as_one_batch_does(toy_model, toy_model_float64, intervention, caplog):
    """A budget too small for two locations trains each alone (and says so); a large one trains each stream in one
    batch. Each location keeps its seed, its rotation's completion, its Adam state and batch order, so only batch
    shapes differ: in float64 the learned parameters and losses agree to 1e-8 and IIA is identical. (In float32,
    Adam's normalised steps can amplify rounding in directions the loss does not constrain: a borderline test prompt
    may flip.)"""
    training = Training(intervention=intervention, low_rank_dimension=4, epochs=2)
    train, test = counterfactual_splits(toy_model)
    with caplog.at_level("INFO", logger="circuitlab"):
        alone = das_sweep(toy_model, train, test, GROUPED, training, progress=False, memory_budget_mb=1)
    assert f"{len(GROUPED)} locations train in {len(GROUPED)} groups of 1 (memory_budget_mb=1" in caplog.text
    assert "need more than memory_budget_mb=1 to train alone" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="circuitlab"):
        together = das_sweep(toy_model, train, test, GROUPED, training, progress=False, memory_budget_mb=100_000)
    assert f"{len(GROUPED)} locations train in 2 groups of 2-6" in caplog.text
    torch.testing.assert_close(alone.iia, together.iia, rtol=0, atol=1.01 / test.n_pairs)  # a borderline test prompt at most
    torch.set_default_dtype(torch.float64)
    try:
        alone = das_sweep(toy_model_float64, train, test, GROUPED, training, progress=False, memory_budget_mb=1)
        together = das_sweep(toy_model_float64, train, test, GROUPED, training, progress=False, memory_budget_mb=100_000)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(alone.iia, together.iia, rtol=0, atol=0)
    torch.testing.assert_close(alone.loss, together.loss, rtol=0, atol=1e-8)
    for a, b in zip(alone.states, together.states):
        assert a.keys() == b.keys() and a["basis"].dtype == torch.float64
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-8)
    assert any(not torch.equal(a["basis"], b["basis"]) for a, b in zip(alone.states, together.states))  # they did differ in rounding


def test_a_location_trains_as_it_would_alone_whatever_ran_before(toy_model):
    """The global random state and the locations beside it change nothing: torch's parametrisation would complete each
    basis into a rotation from the global random state (a different trajectory for every neighbour and every
    earlier draw); each location's completion comes from its own seed."""
    train, test = counterfactual_splits(toy_model)
    training = Training(intervention="das", low_rank_dimension=2, epochs=1)
    location = [Location("z", 1, "END", (0,), "", 0)]
    torch.manual_seed(0)
    alone = das_sweep(toy_model, train, test, location, training, progress=False)
    torch.manual_seed(1)
    beside = das_sweep(toy_model, train, test, [Location("z", 1, "END", (h,), "", h) for h in (3, 2, 0)], training, progress=False)
    torch.testing.assert_close(beside.states[2]["basis"], alone.states[0]["basis"], rtol=0, atol=1e-6)
    torch.testing.assert_close(beside.loss[2], alone.loss[0], rtol=0, atol=1e-6)


def test_groups_fit_the_budget_and_cover_every_location(toy_model):
    """Every location in exactly one group of its stream and width; a group of several fits the budget; groups hold
    consecutive layers (sorted), so that a group's forwards start late; the estimate grows with the layers and
    positions trained and with the locations."""
    from circuitlab.methods.das import groups
    from circuitlab.methods.das.compute import location_width, model_dims

    train, _ = counterfactual_splits(toy_model)
    cfg = toy_model.cfg
    widths = [location_width(loc, *model_dims(toy_model)) for loc in GROUPED]
    starts = groups.first_positions(GROUPED, train)
    assert starts[:3] == [int(train.named_positions["S2"].min()), int(train.named_positions["END"].min()), 3]
    one = groups.training_bytes(cfg, 20, train.width, 3, 1, 64, 1)
    assert groups.training_bytes(cfg, 20, train.width, 3, 0, 64, 1) > one > groups.training_bytes(cfg, 20, train.width, 5, 1, 64, 1)
    assert one < groups.training_bytes(cfg, 20, train.width, 3, 1, 64, 1, n_locations=2) < 2 * one  # the weights' share is the group's
    for budget in (1, 2 * one, 5 * one, 10**9):
        plan = groups.plan_groups(GROUPED, widths, starts, cfg, train.width, 20, 1, budget)
        assert sorted(i for g in plan for i in g.indices) == list(range(len(GROUPED)))
        for g in plan:
            assert {(GROUPED[i].stream, widths[i]) for i in g.indices} == {(g.stream, g.width)}
            assert len(g.indices) == 1 or g.bytes <= budget
            layers = [GROUPED[i].layer for i in g.indices]
            assert layers == sorted(layers) and g.first_layer == layers[0]
    assert len(groups.plan_groups(GROUPED, widths, starts, cfg, train.width, 20, 1, 10**9)) == 2
