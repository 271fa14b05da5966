"""Bad input ends in one line naming the field, exit code 2, no traceback, nothing written, no model loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from circuitlab import cli
from circuitlab.models import loading

PATH = "+experiment=ioi_path_to_name_movers"
DAS = "+experiment=ioi_position"
BAD_RUNS = {
    "unknown experiment": (["+experiment=nope"], "experiment=nope"),
    "unknown model group": (["model=gpt9"], "model=gpt9"),
    "unknown embedded model": (["model.name=toy-nope"], "model.name=toy-nope"),
    "unknown pretrained name": (["model=gpt2-small", "model.name=not-a-model"], "model.name=not-a-model"),
    "unknown task": (["task=nope"], "task=nope"),
    "unknown stream": (["sweep.streams=[resid_pre,residd]"], "sweep.streams=residd"),
    "layer out of range": (["sweep.layers=[0,7]"], "sweep.layers=7"),
    "position out of range": (["task.templates=when", "sweep.positions=[3,40]"], "sweep.positions=40"),
    "unknown named position": (["sweep.positions=[XX]"], "sweep.positions=XX"),
    "raw positions over mixed lengths": (["task.templates=all", "task.split=all", "sweep.positions=every"], "sweep.positions=every"),
    "empty prompt set": (["task.fixed_length=3"], "no prompt pairs left"),
    "missing local path": (["model=local", "model.path=/nonexistent/dir"], "model.path=/nonexistent/dir"),
    "local without path": (["model=local"], "model.path"),
    "bad direction": (["method.direction=sideways"], "method.direction=sideways"),
    "bad template": (["task.templates=[when,nope]"], "task.templates=nope"),
    "bad corruption": (["task.corruption=shuffle"], "task.corruption=shuffle"),
    "wrong type": (["seed=abc"], "seed"),
    "unknown key": (["task.colour=red"], "colour"),
    "bad device": (["device=tpu"], "device=tpu"),
    "heads on a stream without heads": (["sweep.streams=[resid_pre]", "sweep.heads=each"], "sweep.heads=each"),
    "head out of range": (["sweep.streams=[z]", "sweep.heads=[0,4]"], "sweep.heads=4"),
    "cumulative heads without an order, for a method that does not rank": (["+experiment=toy_resample_scales", "sweep.streams=[z]", "sweep.heads=cumulative"],
                                                                            "sweep.head_order=null is not allowed"),
    "head order out of range": (["sweep.streams=[z]", "sweep.heads=cumulative", "sweep.head_order=[9]"], "sweep.head_order=9"),
    "unknown head mode": (["sweep.streams=[z]", "sweep.heads=some"], "sweep.heads=some"),
    "unknown metric": (["method.metrics=[logit_diff,entropy]"], "method.metrics=entropy"),
    "prob without tokens": (["method.metrics=[prob]"], "task.track"),
    "tracked token not one token": (["method.metrics=[prob]", "task.track=['Mary John']"], "task.track='Mary John'"),
    "receiver at begin_layer": ([PATH, "method.receivers=[v.1.0]", "method.begin_layer=1"], "method.begin_layer=1"),
    "receiver head out of range": ([PATH, "method.receivers=[q.1.7]"], "method.receivers=q.1.7"),
    "receiver layer out of range": ([PATH, "method.receivers=[resid_post.5]"], "method.receivers=resid_post.5"),
    "receiver syntax": ([PATH, "method.receivers=[v.1]"], "method.receivers=v.1"),
    "no receivers": ([PATH, "method.receivers=[]"], "method.receivers"),
    "no sender left": ([PATH, "method.receivers=[v.1.0]", "sweep.layers=[1]"], "no sender left"),
    "sender stream": ([PATH, "sweep.streams=[resid_pre]"], "sweep.streams=resid_pre"),
    "bad receiver position": ([PATH, "method.receiver_positions=XX"], "method.receiver_positions=XX"),
    "bad pattern heads": ([PATH, "method.pattern_heads=[[0,9]]"], "method.pattern_heads=[0, 9]"),
    "bad pattern prompts": ([PATH, "method.pattern_prompts=both"], "method.pattern_prompts=both"),
    "das subspace wider than its location": ([DAS, "method.low_rank_dimension=81"], "method.low_rank_dimension=81"),
    "das head subspace wider than its heads": ([DAS, "sweep.streams=[z]", "sweep.heads=[[0]]", "method.low_rank_dimension=49"], "method.low_rank_dimension=49"),
    "variable the task lacks": ([DAS, "task.variable=gender"], "task.variable=gender"),
    "source letters the base lacks": ([DAS, "task.source_patterns=[CDD]"], "task.source_patterns=CDD"),
    "das without counterfactual task": ([DAS, "task=ioi"], "IOITaskConfig"),
    "das without counterfactual task, plain": (["method=das", "sweep.positions=[END]"], "task=ioi"),
    "raw das positions over different lengths": ([DAS, "sweep.positions=[3]"], "sweep.positions=3"),
    "unknown intervention": ([DAS, "method.intervention=magic"], "method.intervention=magic"),
    "load missing": ([DAS, "method.load=/nonexistent/run"], "method.load=/nonexistent/run"),
    "scales not numbers": (["+experiment=toy_resample_scales", "method.scales=[0,half]"], "method.scales=half"),
    "unknown ablation mode": (["+experiment=toy_resample_scales", "method.mode=shuffle"], "method.mode=shuffle"),
    "circuit node not in the model": (["+experiment=toy_pca_ablation", "method.circuit=[head.0.0,head.2.1]"], "method.circuit=head.2.1"),
    "circuit node syntax": (["+experiment=toy_pca_ablation", "method.circuit=[neuron.3]"], "method.circuit=neuron.3"),
    "pca k wider than the stream": (["+experiment=toy_pca_ablation", "sweep.streams=[mlp_out]", "method.k=33"], "method.k=33"),
    "pca k wider than a head": (["+experiment=toy_pca_ablation", "method.k=9"], "method.k=9"),
    "pca k not positive": (["+experiment=toy_pca_ablation", "method.k=0"], "method.k=0"),
    "output_change without labels": (["+experiment=toy_resample_scales", "method.metrics=[output_change]"], "method.metrics=output_change"),
    "repeat_first too long": (["+experiment=toy_pca_ablation", "task.length=9"], "task.length=9"),
    "shard index beyond the shards": (["sweep.shard=4", "sweep.num_shards=4"], "sweep.shard=4"),
    "negative shard count": (["sweep.num_shards=0"], "sweep.num_shards=0"),
    "more shards than points": (["sweep.layers=[1]", "sweep.positions=[3]", "sweep.num_shards=4"], "sweep.num_shards=4"),
    "sharded das": ([DAS, "sweep.num_shards=2"], "sweep.num_shards=2"),
    "unknown launcher": (["hydra/launcher=sluurm"], "hydra/launcher=sluurm"),
    "unknown resample source": (["+experiment=toy_pca_ablation", "method.resample_from=elsewhere"], "method.resample_from=elsewhere"),
    "resampling across prompts of different lengths": (["+experiment=toy_resample_scales", "method.resample_from=dataset", "task.templates=all", "task.split=all"],
                                                        "method.resample_from=dataset"),
    "unknown analysis": (["+experiment=ioi_dla", "method.analyses=[heads,circuits]"], "method.analyses=circuits"),
    "attribution prompts": (["+experiment=ioi_dla", "method.prompts=both"], "method.prompts=both"),
    "answers not tokens of the model": (["+experiment=addition_path_to_logits", "task.nmax=99"], "no prompt pairs left"),
    "addition offset 0": (["+experiment=addition_path_to_logits", "task.offset=0"], "task.offset=0"),
    "addition prompts beyond the context": (["+experiment=addition_path_to_logits", "task.n_demos=12"], "exceed the model's context"),
    "typo added with +": (["+task.n_promts=8"], "task.n_promts=8"),
    "empty head group": (["sweep.streams=[z]", "sweep.heads=[[]]"], "sweep.heads=[[]]"),
    "scales NaN": (["+experiment=toy_resample_scales", "method.scales=[0,nan]"], "method.scales=nan"),
    "memory budget negative": (["memory_budget_mb=-5"], "memory_budget_mb=-5"),
    "das learning rate zero": ([DAS, "method.lr=0"], "method.lr=0.0"),
    "das epochs zero": ([DAS, "method.epochs=0"], "method.epochs=0"),
    "layers null": (["sweep.layers=null"], "sweep.layers=null"),
    "hydra's own error": (["hydra.job.chdir=maybe"], "hydra.job.chdir"),
}


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(loading, "_load_cached", refuse)


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_input(case, capsys, tmp_path, monkeypatch, no_model_loads):
    monkeypatch.chdir(tmp_path)
    overrides, expected = BAD_RUNS[case]
    with pytest.raises(SystemExit) as exit_info:
        preset = [] if any(o.startswith("+experiment=") for o in overrides) else ["+experiment=ioi_patching"]
        cli.main(["run", *preset, *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not (tmp_path / "results").exists(), "bad input must not create a run dir"


def test_error_lists_allowed_values(capsys, no_model_loads):
    with pytest.raises(SystemExit):
        cli.main(["run", "sweep.streams=[nope]"])
    err = capsys.readouterr().err
    assert "resid_pre" in err and "block_input" in err and "mlp_out" in err


@pytest.mark.parametrize(
    "argv",
    [["frobnicate"], ["list", "widgets"], ["figures", "/nonexistent/results"], ["train-toy", "task=chess"], ["train-toy", "steps=x", "task=ioi"]],
)
def test_bad_commands(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_console_script_has_no_traceback(tmp_path):
    """The real entry point, in a subprocess: exit code 2 and a single line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "circuitlab.cli", "run", "+experiment=ioi_patching", "sweep.layers=[5]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "circuitlab: error: sweep.layers=5 is not allowed; allowed: all, or integers 0..1"
    ]


def test_unreachable_hub_fails_fast_in_one_line(monkeypatch):
    """No network and no cache: one line naming the model and the local-checkpoint route, without retries."""
    import time

    from circuitlab.errors import CircuitlabError

    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(CircuitlabError, match=r"model.name=gpt2-xl: the Hugging Face hub cannot be reached.*model=local model.path=DIR"):
        loading.ensure_hub_or_cache("gpt2-xl")
    assert time.perf_counter() - start < 5


def test_list_names_streams_models_experiments(capsys):
    cli.main(["list"])
    out = capsys.readouterr().out
    for expected in ("resid_pre", "block_input", "toy-ioi", "ioi_patching", "ioi"):
        assert expected in out

