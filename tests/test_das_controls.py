"""DAS's controls and hypotheses: the controls' parts against plain references (shuffled labels, the re-initialised
model, random subspaces and trained fits scored by a direct hook), a fit trained beside the real one as it trains
alone, and the issue's criteria on the models whose variables are known: positional-ioi (the S1-slot variable, by
construction) and toy-ioi (the IO name at END after layer 1)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from circuitlab.locations import Location
from circuitlab.methods.das import controls as ctl
from circuitlab.methods.das.compute import Fit, Training, das_sweep
from circuitlab.models import loading
from circuitlab.models import positional_ioi as P
from circuitlab.tasks import ioi_counterfactual as icf

CONSTRUCTED = [Location("resid_post", layer, label) for _, layer, label in P.LOCATIONS]  # S2 after layer 1, END after layer 2


@pytest.fixture(scope="module")
def positional():
    cfg = OmegaConf.create({"source": "embedded", "name": "positional-ioi", "path": None, "dtype": "float32", "allow_pickle": False,
                            **{flag: False for flag in loading.PROCESSING_FLAGS}})
    model = loading.load_model(cfg)
    model.tokenizer = loading.load_tokenizer(cfg)  # (a word-level tokenizer the loader keeps apart)
    return model


def splits(model, variable="position", n_train=100, n_prompts=60, source_names="base", hypotheses=()):
    """(train, test) pairs and each hypothesis' (train, test) labels for them."""
    task = OmegaConf.create({"variable": variable, "n_prompts": n_prompts, "n_train": n_train, "base_patterns": ["ABB", "BAB"],
                             "source_patterns": None, "templates": "all", "source_names": source_names})
    tok = model.tokenizer
    bos = tok.bos_token_id
    pairs = [icf.build_split(task, tok, [bos], bos, 0, split) for split in ("train", "test")]
    labels = [icf.hypothesis_labels(task, tok, [bos], bos, 0, split, list(hypotheses)) for split in ("train", "test")]
    return pairs[0], pairs[1], {name: (labels[0][name], labels[1][name]) for name in hypotheses}


def direct_iia(model, test, loc: Location, basis: torch.Tensor, labels: torch.Tensor) -> float:
    """IIA of x <- x + (s - x) Q Q^T on resid_post at a named position, by a hook written here (no circuitlab code)."""
    name = f"blocks.{loc.layer}.hook_resid_post"
    _, cache = model.run_with_cache(test.clean_tokens, names_filter=name)
    rows, pos = torch.arange(test.n_pairs), test.named_positions[loc.positions]

    def swap(act, hook):
        act = act.clone()
        x, s = act[rows, pos], cache[name][rows, pos]
        act[rows, pos] = x + (s - x) @ basis @ basis.T
        return act

    logits = model.run_with_hooks(test.corrupted_tokens, fwd_hooks=[(name, swap)])[rows, test.final_positions]
    return float((logits.argmax(-1) == labels).float().mean())


def test_shuffled_labels_give_every_pair_another_pairs_label():
    """Distinct labels: a permutation with no pair keeping its own. Repeated labels with tokens to avoid (a pair's
    label and its other answer): every pair takes some other pair's label that it does not avoid."""
    labels = torch.arange(50) + 7
    out = ctl.shuffled(labels, 3)
    assert sorted(out.tolist()) == labels.tolist() and bool((out != labels).all())
    assert torch.equal(out, ctl.shuffled(labels, 3)) and not torch.equal(out, ctl.shuffled(labels, 4))
    labels = torch.tensor([5, 5, 6, 6, 7, 7, 8, 9] * 5)
    other = torch.tensor([6, 7, 5, 8, 5, 9, 5, 5] * 5)
    out = ctl.shuffled(labels, 0, torch.stack([labels, other], 1))
    assert set(out.tolist()) <= set(labels.tolist())
    assert bool(((out != labels) & (out != other)).all())


def test_random_model_is_drawn_as_the_architecture_initialises(toy_model):
    """Every weight matrix drawn again from N(0, initializer_range) (TransformerLens' gpt2 init), seeded; biases 0,
    norm scales 1; the model itself and the global random state untouched."""
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    rng = torch.random.get_rng_state()
    fresh, again, other = ctl.random_model(toy_model, 5), ctl.random_model(toy_model, 5), ctl.random_model(toy_model, 6)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert toy_model.cfg.init_mode == "gpt2"
    for (name, p), (_, q), (_, r) in zip(fresh.named_parameters(), again.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), name
        if "W_" in name:
            assert not torch.equal(p, r) and not torch.equal(p, before[name]), name
            if p.numel() >= 1000:
                assert abs(float(p.std()) / toy_model.cfg.initializer_range - 1) < 0.1, name
        else:
            assert bool((p == (1.0 if name.endswith(".w") else 0.0)).all()), name
    for name, tensor in toy_model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def first_clause(text: str) -> tuple[list[str], int]:
    """The two first-clause names ("N1 and N2") and which of them (0 or 1) is the IO (the one not named again)."""
    words = text.replace(",", " ").replace(".", " ").split()
    i = words.index("and")
    names = [words[i - 1], words[i + 1]]
    return names, 1 if names[0] in words[i + 2 :] else 0


def test_hypothesis_labels_follow_their_definitions(toy_model):
    """Read off the prompt texts: position = the base's name in the source's IO slot, name = the source's IO,
    io_token = the source's name at the base's IO position; the task's own labels are the name hypothesis'."""
    train, test, labels = splits(toy_model, variable="name", hypotheses=("position", "name", "io_token", icf.BASE_ANSWER))
    word = lambda t: toy_model.tokenizer.convert_ids_to_tokens([int(t)])[0].strip()  # noqa: E731
    for pairs, split in ((train, 0), (test, 1)):
        assert torch.equal(labels["name"][split], pairs.answer_tokens)
        for i in range(pairs.n_pairs):
            (base, base_io), (source, source_io) = first_clause(pairs.corrupted_texts[i]), first_clause(pairs.clean_texts[i])
            assert word(labels["position"][split][i]) == base[source_io]
            assert word(labels["name"][split][i]) == source[source_io]
            assert word(labels["io_token"][split][i]) == source[base_io]
            assert word(labels[icf.BASE_ANSWER][split][i]) == base[base_io]
    slots = [first_clause(t)[1] for t in test.corrupted_texts], [first_clause(t)[1] for t in test.clean_texts]
    assert all(a != b for a, b in zip(*slots))  # test pairs always swap the slot: the three hypotheses differ on every pair
    assert bool((labels["position"][1] != labels["io_token"][1]).all() and (labels["name"][1] != labels["io_token"][1]).all())


def test_controls_stay_low_where_the_real_fit_finds_the_variable(positional):
    """positional-ioi (the seed's pairs, 1-d DAS): the real fit >= 0.9 at S2 after layer 1 and END after layer 2, where
    the construction puts the variable; every control <= 0.1 there. The random subspace's, the shuffled fit's and the
    real fit's IIA equal a direct hook with their bases (the shuffled fit against its shuffled test labels)."""
    train, test, _ = splits(positional)
    avoid = lambda p: torch.stack([p.answer_tokens, p.wrong_tokens], 1)  # noqa: E731
    shuffled = Fit("shuffled_labels", ctl.shuffled(train.answer_tokens, 1, avoid(train)), ctl.shuffled(test.answer_tokens, 2, avoid(test)))
    training = Training(intervention="das", low_rank_dimension=1, lr_decay_steps=50)
    result = das_sweep(positional, train, test, CONSTRUCTED, training, progress=False, fits=[shuffled], random_subspace=True)
    random_model = das_sweep(ctl.random_model(positional, 42), train, test, CONSTRUCTED, training, progress=False)
    controls = {"random_subspace": result.variants["random_subspace"].iia, "shuffled_labels": result.variants["shuffled_labels"].iia,
                "random_model": random_model.iia}
    assert bool((result.iia >= 0.9).all()), result.iia
    for name, iia in controls.items():
        assert bool((iia <= 0.1).all()), (name, iia)
    for i, loc in enumerate(CONSTRUCTED):
        for fit, labels in ((result, test.answer_tokens), (result.variants["random_subspace"], test.answer_tokens),
                            (result.variants["shuffled_labels"], shuffled.test_labels)):
            assert abs(direct_iia(positional, test, loc, fit.states[i]["basis"], labels) - float(fit.iia[i])) < 1e-6
    assert not torch.allclose(result.variants["random_subspace"].states[0]["basis"].abs(), result.states[0]["basis"].abs(), atol=0.1)


def test_a_fit_beside_the_real_one_trains_as_it_would_alone(toy_model):
    """The shuffled-labels fit trained in the real fit's forwards equals the same training run alone on those labels
    (float64: only batch shapes differ), and leaves the real fit as it is without it."""
    model = copy.deepcopy(toy_model).to(torch.float64)
    train, test, _ = splits(toy_model, variable="name", n_train=40, n_prompts=30)
    fit = Fit("shuffled_labels", ctl.shuffled(train.answer_tokens, 1), ctl.shuffled(test.answer_tokens, 2))
    locations = [Location("resid_post", 1, "END"), Location("resid_post", 0, "S2")]
    training = Training(intervention="das", low_rank_dimension=3, epochs=2)
    torch.set_default_dtype(torch.float64)
    try:
        beside = das_sweep(model, train, test, locations, training, progress=False, fits=[fit])
        alone = das_sweep(model, dataclasses.replace(train, answer_tokens=fit.train_labels), dataclasses.replace(test, answer_tokens=fit.test_labels),
                          locations, training, progress=False)
        real = das_sweep(model, train, test, locations, training, progress=False)
    finally:
        torch.set_default_dtype(torch.float32)
    for one, other in ((beside.variants["shuffled_labels"], alone), (beside, real)):
        torch.testing.assert_close(one.iia, other.iia, rtol=0, atol=0)
        torch.testing.assert_close(one.loss, other.loss, rtol=0, atol=1e-8)
        for a, b in zip(one.states, other.states):
            torch.testing.assert_close(a["basis"], b["basis"], rtol=0, atol=1e-8)
    assert not torch.allclose(beside.loss, alone.loss)  # the two fits did learn different things


def hypotheses_compared(model, locations, names=("position", "name", "io_token"), **training):
    """Each hypothesis' IIA at `locations` on the name variable's pairs (20 names shared by train and test, sources
    with names of their own: every hypothesis' label differs from the others' and from the base's answer)."""
    train, test, labels = splits(model, variable="name", hypotheses=names)
    fits = [Fit(name, *labels[name]) for name in names]
    result = das_sweep(model, train, test, locations, Training(intervention="das", **training), progress=False, fits=fits)
    return {name: result.variants[name].iia for name in names}, result


def test_position_wins_where_it_lives_and_the_io_token_at_io_on_positional_ioi(positional):
    """positional-ioi, 20-d DAS: the position hypothesis beats the others at S2 after layer 1 and END after layer 2; at
    IO (layers 0-2, read by layer 3's name mover) the name there wins and position loses; at END after layer 3 the
    answer's name (the name hypothesis). Measured at every layer x position: docs/methods/das.md."""
    locations = [*CONSTRUCTED, Location("resid_post", 1, "IO"), Location("resid_post", 3, "END")]
    iia, _ = hypotheses_compared(positional, locations, low_rank_dimension=20, lr_decay_steps=50)
    table = torch.stack([iia[name] for name in ("position", "name", "io_token")])  # [hypothesis, location]
    assert table.argmax(0).tolist() == [0, 0, 2, 1], table
    top2 = table.topk(2, dim=0).values
    assert bool((top2[0] - top2[1] >= 0.8).all()), table


def test_name_wins_where_das_finds_the_name_on_toy_ioi(toy_model):
    """toy-ioi, 20-d DAS (ioi_name_das): the name hypothesis beats position and io_token at END after layer 1, where
    ioi_name_das finds the name; the random-model control stays low there."""
    location = [Location("resid_post", 1, "END")]
    iia, _ = hypotheses_compared(toy_model, location, low_rank_dimension=20)
    assert float(iia["name"][0]) >= 0.8 and float(iia["name"][0]) - max(float(iia["position"][0]), float(iia["io_token"][0])) >= 0.7, iia
    train, test, _ = splits(toy_model, variable="name")
    random_model = das_sweep(ctl.random_model(toy_model, 42), train, test, location, Training(intervention="das", low_rank_dimension=20),
                             progress=False)
    assert float(random_model.iia[0]) <= 0.1


def test_a_run_writes_controls_and_hypotheses_beside_the_real_fit(tmp_path):
    """Through a run: results.csv holds the real fit (control and hypothesis empty), each control and each hypothesis
    at every location, read back as strings; hypotheses.csv is the table of those rows; the figures draw them; the
    key number is the real fit's; the task's own variable is the real fit, not trained twice."""
    from circuitlab import cli
    from circuitlab.headline import key_number
    from circuitlab.methods.das.hypotheses import hypothesis_table
    from circuitlab.results import read_results
    from circuitlab.run import run_experiment
    from circuitlab.runfiles import read_table

    overrides = ["+experiment=ioi_name_das", "sweep.layers=[1]", "sweep.positions=[S2,END]", "task.n_train=20", "task.n_prompts=12",
                 "method.epochs=1", "method.batch_size=10", "method.low_rank_dimension=4", "progress=false",
                 "method.controls=[random_subspace,random_model,shuffled_labels]", "method.hypotheses=[position,name]"]
    run_experiment(cli.compose_config(overrides), tmp_path)
    results = read_results(tmp_path)
    assert results["control"].dtype == "string" and results["hypothesis"].dtype == "string"
    iia = results[results["metric"] == "iia"]
    fits = iia.groupby([iia["control"].fillna(""), iia["hypothesis"].fillna("")]).size()
    assert fits.to_dict() == {(c, h): 2 for c, h in [("", ""), ("random_subspace", ""), ("random_model", ""), ("shuffled_labels", ""),
                                                     ("", "position"), ("", "name")]}
    real = iia[(iia["control"] == "") & (iia["hypothesis"] == "")].set_index("position")["value"]
    name = iia[iia["hypothesis"] == "name"].set_index("position")["value"]
    assert real.to_dict() == name.to_dict()  # task.variable=name: the name hypothesis is the real fit
    table = read_table(tmp_path / "hypotheses.csv")
    expected = hypothesis_table(results, ["position", "name"])
    assert table["best"].tolist() == expected["best"].tolist()
    assert table["gap"].tolist() == pytest.approx(expected["gap"].tolist())
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {"iia_heatmap.png", "iia_hypotheses.png", "hypothesis_margin.png"} <= figures
    key = key_number(results, "das", tmp_path)
    assert key["value"] == pytest.approx(float(real.max())) and key["n"] == 2


@pytest.mark.parametrize("overrides, message", [
    (["method.controls=[random_subspace,noise]"], "method.controls=noise"),
    (["method.controls=[random_model,random_model]"], "each name once"),
    (["method.intervention=vanilla", "method.controls=[random_subspace]"], "method.intervention=vanilla"),
    (["method.hypotheses=[name]"], "two or more of position, name, io_token"),
    (["method.hypotheses=[name,size]"], "method.hypotheses=size"),
    (["method.load=.", "method.controls=[shuffled_labels]"], "random_subspace only with method.load"),
    (["task.variable=position", "method.hypotheses=[position,name]"], "the base's own answer on every test pair"),
    (["task.variable=position", "method.hypotheses=[position,io_token]"], "[position, io_token]"),
    (["method.featurizer=sparse"], "method.featurizer=sparse"),
    (["method.featurizer=mask", "method.intervention=boundless"], "method.intervention=boundless"),
])
def test_bad_controls_and_hypotheses_are_refused_in_one_line(tmp_path, overrides, message):
    """Refused before the model runs, in one line naming the key; nothing written."""
    from circuitlab import cli
    from circuitlab.errors import CircuitlabError
    from circuitlab.run import run_experiment

    cfg = cli.compose_config(["+experiment=ioi_name_das", "sweep.layers=[1]", "sweep.positions=[END]", "task.n_train=20", "task.n_prompts=10",
                              "progress=false", *overrides])
    with pytest.raises(CircuitlabError, match=message.replace("[", r"\[")):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_learned_mask_finds_the_constructed_dimension(positional):
    """featurizer=mask on positional-ioi: IIA >= 0.9 where the variable lives, the hard mask swapping exactly the
    dimension the construction writes it to (S1_SLOT at S2 after layer 1, S1_SLOT_END at END after layer 2); its IIA
    equals a direct hook with that mask; a random mask of the same size scores <= 0.1 there."""
    from circuitlab.methods.das.mask import swapped

    train, test, _ = splits(positional)
    training = Training(intervention="das", featurizer="mask", lr_decay_steps=50)
    result = das_sweep(positional, train, test, CONSTRUCTED, training, progress=False, random_subspace=True)
    assert bool((result.iia >= 0.9).all()) and bool((result.variants["random_subspace"].iia <= 0.1).all()), result.iia
    assert [swapped(s["basis"]) for s in result.states] == [[P.S1_SLOT], [P.S1_SLOT_END]]
    for i, loc in enumerate(CONSTRUCTED):
        assert abs(direct_iia(positional, test, loc, result.states[i]["basis"], test.answer_tokens) - float(result.iia[i])) < 1e-6
