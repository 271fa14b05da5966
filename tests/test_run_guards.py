"""Issue 24's guards of `circuitlab run` and `train-toy`: silent nonsense (identical prompts, an answer equal to its
wrong answer, sweep keys a whole-model method ignores, a tokenizer that does not fit the embedding), damage outside
the run dir (`run.dir=` over other runs, `name=` with a path in it), tracebacks (long names, malformed user presets,
`hydra.launcher.n_jobs`, train-toy values) and refusals that came too late (an edge circuit larger than the model
from its config, in a multirun too; unbounded counts). Each bad command: exit code 2, one line, no traceback, no model loaded, and
every file under the test's dirs as it was (bytes, size, mtime). Then the degenerate-baseline rule on a run whose
clean - corrupted gap is below its threshold (metrics.py), checked against logit differences computed here, and
the advice an interrupted multirun job gives."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from circuitlab import cli, metrics
from circuitlab.models import loading
from tests.test_refused_reruns import digest

EMBEDDED = loading.EMBEDDED_DIR
LONG = "x" * 300
QUIET = ["progress=false", "figures=false", "threads=1"]
PROMPT = "When Mary and John went to the store, John gave the drink to"
JOBLIB = pytest.mark.skipif(__import__("importlib").util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                            reason="the joblib launcher is not installed")


def pairs_file(path: Path, corrupted: str, answer: str = " Mary", wrong: str = " John") -> Path:
    path.write_text("".join(json.dumps({"clean": PROMPT, "corrupted": corrupted, "answer": answer, "wrong": wrong}) + "\n" for _ in range(4)))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The inputs the bad commands name: prompt files, dirs holding runs, user presets, checkpoints whose tokenizer
    is another model's, a Gemma-2 checkpoint, a dir of someone's files."""
    from tests import hf_fixtures

    w = tmp_path_factory.mktemp("world")
    pairs_file(w / "same.jsonl", PROMPT)
    pairs_file(w / "same_answer.jsonl", PROMPT.replace(", John", ", Mary"), wrong=" Mary")
    pairs_file(w / "place.jsonl", PROMPT.replace("store", "park"))  # the toy model barely tells these apart
    for run in ("results/ioi/2026-01-01_00-00-00", "sweep/0"):
        (w / run).mkdir(parents=True)
        (w / run / "manifest.json").write_text("{}\n")
    presets = w / "presets"
    (presets / "experiment").mkdir(parents=True)
    (presets / "task").mkdir()
    (presets / "experiment" / "broken.yaml").write_text("a: [1, 2\nb: {")
    (presets / "experiment" / "a_list.yaml").write_text("- 1\n- 2\n")
    (presets / "experiment" / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (presets / "experiment" / "names_broken.yaml").write_text("# @package _global_\ndefaults:\n  - override /task: broken_task\n")
    (presets / "task" / "broken_task.yaml").write_text("name: ioi\nn_prompts: [1, 2\n")
    for name, model, tokenizer in (("small_tokenizer", "toy-ioi", "toy-facts"), ("large_tokenizer", "toy-addition", "toy-ioi")):
        shutil.copytree(EMBEDDED / model, w / name)
        for file in hf_fixtures.TOKENIZER_FILES:
            shutil.copy(EMBEDDED / tokenizer / file, w / name / file)
    shutil.copytree(EMBEDDED / "toy-ioi", w / "toy_ioi_copy")
    hf_fixtures.build("gemma2", w / "gemma2")
    (w / "someones").mkdir()
    (w / "someones" / "notes.txt").write_text("not a model\n")
    return w


def bad_runs(w: Path) -> dict[str, tuple[list[str], str]]:
    """name: (the command's arguments after `circuitlab`, what its one line says)."""
    eap, dla = ["run", "+experiment=known_circuit_eap"], ["run", "+experiment=ioi_dla"]
    pairs = lambda name, *rest: ["run", *rest, "task=pairs", f"task.path={w / name}", "sweep=named_positions", "sweep.positions=[END]"]  # noqa: E731
    presets = lambda name: ["run", "--config-dir", str(w / "presets"), f"+experiment={name}"]  # noqa: E731
    return {
        # silent nonsense, now refused before the weights load
        "identical prompts, activation patching": (pairs("same.jsonl"), "every clean prompt is the same as its corrupted prompt (4 pairs)"),
        "identical prompts, eap": (pairs("same.jsonl", "method=eap", "sweep=senders")[:-2], "so method=eap has nothing to compare"),
        "answer equal to wrong": (pairs("same_answer.jsonl"), "pair 1 of 4 (and 3 more) has the same answer and wrong answer"),
        "answer equal to wrong, eap": (pairs("same_answer.jsonl", "method=eap", "sweep=senders")[:-2], "has the same answer and wrong answer"),
        "eap sweep.layers": ([*eap, "sweep.layers=[0]"], "sweep.layers=[0] is not allowed; allowed: all (method=eap scores every edge"),
        "eap sweep.positions": ([*eap, "sweep.positions=[3]"], "sweep.positions=[3] is not allowed; allowed: every or [all]"),
        "eap sweep.heads": ([*eap, "sweep.heads=each"], "sweep.heads=each is not allowed; allowed: null"),
        "eap sweep.streams": ([*eap, "sweep.streams=[mlp_out]"], "sweep.streams=[mlp_out] is not allowed"),
        "edge_patching sweep.head_order": ([*eap, "method=edge_patching", "sweep.head_order=[0]"], "sweep.head_order=[0] is not allowed"),
        "direct attribution sweep.positions": ([*dla, "sweep.positions=[S2]"], "sweep.positions=[S2] is not allowed; allowed: every or [all] or [END]"),
        "tokenizer smaller than the embedding": (["run", "+experiment=ioi_patching", "model=local", f"model.path={w / 'small_tokenizer'}"],
                                                 "its tokenizer has 71 tokens but the model's embedding has 108 (d_vocab)"),
        "tokenizer larger than the embedding": (["run", "+experiment=addition_eap", "model=local", f"model.path={w / 'large_tokenizer'}"],
                                                "its tokenizer has 108 tokens but the model's embedding has 26 (d_vocab)"),
        # refused too late before: now from the model's config, before its weights load and before any dir exists
        "eap circuit larger than the model": (["run", "+experiment=ioi_eap", "model=local", f"model.path={w / 'gemma2'}", "task.n_prompts=4",
                                               "method.n_edges=111"], "method.n_edges=111 is not allowed; allowed: 0..110 (the model's edges)"),
        "a multirun's too large circuit": (["run", "-m", "+experiment=ioi_eap", "model=local", f"model.path={w / 'gemma2'}", "method.n_edges=20,111",
                                            "task.n_prompts=4", f"hydra.sweep.dir={w / 'new_sweep'}"],
                                           "multirun job 1 of 2 (method.n_edges=111"),
        "ig_steps unbounded": ([*eap, "method=eap_ig", "method.ig_steps=1001"], "method.ig_steps=1001 is not allowed; allowed: a whole number of steps from 1 to 1000"),
        "faithfulness curve unbounded": ([*eap, f"method.curve=[{','.join(str(i / 10) for i in range(1, 102))}]"],
                                         "method.curve=[101 percentages] is not allowed; allowed: a list of at most 100 percentages"),
        "das epochs unbounded": (["run", "+experiment=ioi_position", "method.epochs=1001"], "method.epochs=1001 is not allowed; allowed: an integer from 1 to 1000"),
        "n_prompts unbounded": (["run", "+experiment=ioi_patching", "task.n_prompts=1000001"], "task.n_prompts=1000001 is not allowed"),
        # damage outside the run dir
        "run.dir holding runs": (["run", "+experiment=ioi_patching", f"run.dir={w / 'results'}"], "holds other runs (e.g. ioi/2026-01-01_00-00-00/manifest.json)"),
        "hydra.run.dir holding runs": (["run", "+experiment=ioi_patching", f"hydra.run.dir={w / 'sweep'}"], "holds other runs (e.g. 0/manifest.json)"),
        "run.dir inside a run": (["run", "+experiment=ioi_patching", f"run.dir={w / 'sweep' / '0' / 'figures'}"], "lies inside the run dir"),
        "name with ..": (["run", "+experiment=ioi_patching", "name=../escaped"], "name=../escaped is not allowed; allowed: one directory name"),
        "name ..": (["run", "+experiment=ioi_patching", "name=.."], "name=.. is not allowed"),
        "name with a slash": (["run", "+experiment=ioi_patching", "name=a/b"], "name=a/b is not allowed"),
        # tracebacks before: names over 255 bytes
        "name too long": (["run", "+experiment=ioi_patching", f"name={LONG}"], "(300 characters) is not allowed"),
        "run.dir name too long": (["run", "+experiment=ioi_patching", f"run.dir={w / LONG}"], "is 300 bytes, longer than the 255 a file name may have"),
        "results_dir name too long": (["run", "+experiment=ioi_patching", f"results_dir={w / LONG}"], "results_dir="),
        "task.path name too long": (["run", "task=pairs", f"task.path={w / LONG}"], "a name in this path is longer than the filesystem allows"),
        "model.path name too long": (["run", "model=local", f"model.path={w / LONG}"], "a name in this path is longer than the filesystem allows"),
        "sweep dir name too long": (["run", "-m", "+experiment=ioi_patching", "seed=0,1", f"hydra.sweep.dir={w / LONG}"], "longer than the filesystem allows"),
        "config dir name too long": (["run", "--config-dir", str(w / LONG), "+experiment=ioi_patching"], "longer than the filesystem allows"),
        # tracebacks before: user presets, launcher settings
        "preset not YAML": (presets("broken"), "broken.yaml: not valid YAML (line 2, column 2"),
        "preset a list": (presets("a_list"), "a_list.yaml: a preset holds keys and values (a YAML mapping), not a list"),
        "preset not UTF-8": (presets("latin1"), "latin1.yaml: not UTF-8 text"),
        "preset naming a broken preset": (presets("names_broken"), "broken_task.yaml"),
        "preset not YAML, multirun": ([*presets("broken"), "-m", "seed=0,1"], "broken.yaml: not valid YAML"),
        "n_jobs 0": pytest.param((["run", "-m", "+experiment=ioi_patching", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
                                  "hydra.launcher.n_jobs=0 is not allowed; allowed: a positive integer"), marks=JOBLIB),
        "n_jobs negative": pytest.param((["run", "-m", "+experiment=ioi_patching", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=-2"],
                                         "hydra.launcher.n_jobs=-2 is not allowed"), marks=JOBLIB),
        # train-toy: refused before any training
        "train-toy steps huge": (["train-toy", "task=ioi", "steps=99999999999999999999"], "allowed: a positive integer up to 100000"),
        "train-toy out holding other files": (["train-toy", "task=ioi", f"out={w / 'someones'}"], "holds files that are not a toy model's (notes.txt)"),
        "train-toy out a run dir": (["train-toy", "task=ioi", f"out={w / 'sweep' / '0'}"], "holds files that are not a toy model's (manifest.json)"),
        "train-toy out name too long": (["train-toy", "task=ioi", f"out={w / LONG}"], "is 300 bytes, longer than the 255"),
        "train-toy out not writable": pytest.param((["train-toy", "task=ioi", "out=/proc/circuitlab/toy"], "out=/proc/circuitlab/toy: cannot be written"),
                                                   marks=pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc")),
    }


CASES = [pytest.param(name, marks=entry.marks) if hasattr(entry, "marks") else name  # the names and marks (/world: a stand-in)
         for name, entry in bad_runs(Path("/world")).items()]


@pytest.mark.parametrize("case", CASES)
def test_bad_command_is_one_line_and_changes_nothing(case, world, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(loading, "_load_cached", refuse)
    monkeypatch.chdir(tmp_path)
    entry = bad_runs(world)[case]
    argv, expected = entry.values[0] if hasattr(entry, "values") else entry
    argv = [*argv, *(QUIET if argv[0] == "run" else [])]
    if argv[0] == "run" and not any(a.startswith(("results_dir=", "--config-dir")) for a in argv):
        argv.append(f"results_dir={tmp_path / 'results'}")
    before = {"world": digest(world), "here": digest(tmp_path)}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("circuitlab: error: ") and expected in err, err
    assert {"world": digest(world), "here": digest(tmp_path)} == before


def test_identical_prompts_are_accepted_where_nothing_compares_them(world):
    """Accepted on purpose: the mean counterfactual of the edge methods and direct attribution read no corrupted
    prompt, so identical prompts are no degenerate baseline there (planned, not run)."""
    from circuitlab.plan import prepare

    for overrides in (["method=eap", "sweep=senders", "method.counterfactual=mean"],
                      ["method=direct_attribution", "sweep=named_positions", "sweep.positions=[END]", "method.prompts=clean"]):
        cfg = cli.compose_config([*overrides, "task=pairs", f"task.path={world / 'same.jsonl'}"])
        assert prepare(cfg).pairs.n_pairs == 4


@pytest.mark.parametrize("clean, corrupted, degenerate", [
    (6.352, 6.327, True),  # 0.025 < 0.0635: the toy model on prompts that differ only in the place
    (6.352, 6.208, False),  # 0.144 >= 0.0635
    (1.0, 0.99, False),  # at the threshold (1% of 1.0): kept
    (1.0, 0.9901, True),
    (0.0004, -0.0004, True),  # 0.0008 < the absolute floor 0.001
    (0.0006, -0.0006, False),
    (float("nan"), 1.0, True),
])
def test_the_degenerate_baseline_rule(clean, corrupted, degenerate):
    assert (metrics.degenerate_gap(clean, corrupted) is not None) is degenerate
    gap = metrics.usable_gap(clean, corrupted)
    assert (gap != gap) is degenerate and (degenerate or gap == pytest.approx(clean - corrupted))
    normalised = metrics.normalized_recovery(torch.tensor([corrupted, clean]), corrupted, clean)
    assert bool(torch.isnan(normalised).all()) is degenerate
    if not degenerate:
        assert normalised.tolist() == pytest.approx([0.0, 1.0])


def mean_logit_diffs(pairs) -> tuple[float, float]:
    """The clean and corrupted runs' mean logit difference, from plain forwards of the embedded toy-ioi model."""
    from circuitlab.config import ModelConfig

    model = loading.load_model(ModelConfig(source="embedded", name="toy-ioi"), device="cpu")
    out = []
    for tokens in (pairs.clean_tokens, pairs.corrupted_tokens):
        logits = model(tokens)[torch.arange(len(tokens)), pairs.lengths - 1]
        out.append(float((logits.gather(1, pairs.answer_tokens[:, None]) - logits.gather(1, pairs.wrong_tokens[:, None])).mean()))
    return out[0], out[1]


@pytest.mark.parametrize("method", ["eap", "activation_patching"])
def test_a_degenerate_gap_gives_no_normalised_number(method, world, tmp_path, caplog):
    """Prompts the toy model barely tells apart: the gap, computed here from plain forwards, is below the rule's
    threshold; the run finishes, its raw scores are numbers, every normalised score is NaN (null in the manifest),
    and one warning and the manifest's baseline_gap say why."""
    from circuitlab.api import load
    from circuitlab.plan import prepare

    overrides = [f"method={method}", "task=pairs", f"task.path={world / 'place.jsonl'}", *QUIET, f"run.dir={tmp_path / 'r'}"]
    overrides += ["sweep=senders"] if method == "eap" else ["sweep=named_positions", "sweep.positions=[END]"]
    cfg = cli.compose_config(overrides)
    clean, corrupted = mean_logit_diffs(prepare(cfg).pairs)
    assert abs(clean - corrupted) < max(1e-3, 1e-2 * max(abs(clean), abs(corrupted)))
    from circuitlab.run import run_experiment

    with caplog.at_level("WARNING", logger="circuitlab"):
        manifest = run_experiment(cfg, tmp_path / "r")
    gap = manifest["baseline_gap"]
    assert gap["clean"] == pytest.approx(clean, abs=1e-4) and gap["corrupted"] == pytest.approx(corrupted, abs=1e-4)
    assert gap["gap"] < gap["threshold"] and "every score normalised by it is NaN" in gap["reason"]
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [gap["reason"]]
    results = load(tmp_path / "r").results
    if method == "eap":
        assert manifest["cpr"] is None and manifest["cmd"] is None and manifest["circuit"]["faithfulness"] is None
        assert pd.read_csv(tmp_path / "r" / "faithfulness.csv")["faithfulness"].isna().all()
        assert results["value"].notna().all()  # the edges' scores: drops of the logit difference, not normalised
    else:
        assert results[results["metric"] == "logit_diff_normalized"]["value"].isna().all()
        assert results[results["metric"] == "logit_diff"]["value"].notna().all()
    assert all(isinstance(value, str) or math.isfinite(value) for value in gap.values())  # strict JSON: numbers, no NaN
    from circuitlab import report

    page = (tmp_path / "r" / report.REPORT_FILE).read_text()
    assert "normalised scores are NaN: " + html.escape(gap["reason"]) in page  # the report's Baselines section says why


def test_an_interrupted_multirun_job_advises_the_sweep_dir(tmp_path, monkeypatch, capsys):
    """Under -m, run.dir= is ignored: the line says hydra.sweep.dir=, which reruns every job into its dir."""
    from circuitlab.methods import registry

    hooks = registry.get("activation_patching").hooks

    def interrupted(cfg, plan, model):
        raise KeyboardInterrupt

    monkeypatch.setattr(hooks, "run", interrupted)
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "-m", "+experiment=ioi_patching", "task.n_prompts=4", "seed=0,1", *QUIET, f"hydra.sweep.dir={sweep}"])
    assert exit_info.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"circuitlab: interrupted: no chunk had finished, so nothing is kept in {sweep / '0'}; rerun the same command to "
                    f"start over (hydra.sweep.dir={sweep} reuses that dir)")
    from circuitlab import rundir

    assert rundir.resume_setting(tmp_path / "single") == f"run.dir={tmp_path / 'single'}"
