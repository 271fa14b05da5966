"""Damaged input files, meaningless values, a missing environment and bad multirun jobs: each ends in one line
naming the field or file, exit code 2, no traceback, before any model loads or any run dir is made."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from circuitlab import cli, compose, multirun
from circuitlab.errors import CircuitlabError
from circuitlab.models import loading
from tests.cli_refusal import refused

DAS = "+experiment=ioi_position"
ABLATION = "+experiment=toy_resample_scales"
PATH = "+experiment=ioi_path_to_name_movers"
KNOWN = Path(__file__).resolve().parents[1] / "circuitlab" / "models" / "embedded" / "known-circuit"
GOOD_PAIR = {"clean": "When Mary and John went to the park, John gave the ball to",
             "corrupted": "When Mary and John went to the park, Anna gave the ball to", "answer": " Mary", "wrong": " John"}
GOOD_ADDITION = {"demonstration": [[1, 2], [3, 4], [2, 2], [0, 5]], "inference": [2, 3]}
GARBAGE = b"\x00\x13\x07 this is not what the file should hold <<<"
NOT_UTF8 = b'{"clean": "\xff\xfe\xfa", "x": "\xc3\x28"}\n'


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(loading, "_load_cached", refuse)




# files read as inputs, each damaged in every way ----------------------------------------------------------------


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def interventions(das_locations) -> bytes:
    """A valid interventions.pt for the DAS preset's locations (an 80 x 1 basis each, as positional-ioi's block_output has)."""
    import io

    buffer = io.BytesIO()
    torch.save({"intervention": "das", "low_rank_dimension": 1, "locations": das_locations,
                "states": [{"basis": torch.linalg.qr(torch.randn(80, 1))[0]} for _ in das_locations]}, buffer)
    return buffer.getvalue()


def torch_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def known_circuit_dir(root: Path, config_name: str | None) -> Path:
    """The known-circuit checkpoint (InterpBench layout) copied without its config; `config_name` is written by the case."""
    directory = root / "ckpt"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(KNOWN / name, directory / name)
    return directory


def known_config() -> dict:
    return json.loads((KNOWN / "ll_model_cfg.json").read_text())


def _yaml(value) -> bytes:
    import yaml

    return yaml.safe_dump(value).encode()


# kind -> (file name, good bytes, wrong-type bytes, overrides for a path, what the line must name)
INPUT_FILES = {
    "pairs jsonl": ("pairs.jsonl", lambda: jsonl(GOOD_PAIR, GOOD_PAIR), lambda: jsonl([GOOD_PAIR]),
                    lambda p: ["task=pairs", f"task.path={p}", "sweep=named_positions", "sweep.positions=[END]"], "pairs.jsonl"),
    "addition jsonl": ("addition.jsonl", lambda: jsonl(GOOD_ADDITION, GOOD_ADDITION), lambda: jsonl({"demonstration": "1+2=3"}),
                       lambda p: ["+experiment=addition_path_to_logits", f"task.path={p}"], "addition.jsonl"),
    "interpbench json": ("ll_model_cfg.json", lambda: json.dumps(known_config()).encode(), lambda: b"[2, 16, 4]\n",
                         lambda p: ["+experiment=known_circuit_scales", "model=local", f"model.path={p.parent}"], "model.path="),
    "interpbench yaml": ("ll_model_cfg.yaml", lambda: _yaml(known_config()), lambda: b"- 2\n- 16\n",
                         lambda p: ["+experiment=known_circuit_scales", "model=local", f"model.path={p.parent}"], "model.path="),
    "interpbench pickle": ("ll_model_cfg.pkl", lambda: pickle.dumps(known_config()), lambda: pickle.dumps([2, 16, 4]),
                           lambda p: ["+experiment=known_circuit_scales", "model=local", f"model.path={p.parent}", "model.allow_pickle=true"],
                           "model.path="),
    "das interventions.pt": ("interventions.pt", None, lambda: torch_bytes([1, 2, 3]), lambda p: [DAS, f"method.load={p}"], "method.load="),
}
DAMAGE = ("missing", "empty", "truncated", "wrong type", "garbage", "invalid UTF-8")
FILE_CASES = [(kind, damage) for kind in INPUT_FILES for damage in DAMAGE]


@pytest.fixture(scope="module")
def das_locations():
    from circuitlab.methods.das.compute import location_key
    from circuitlab.plan import prepare

    return [location_key(loc) for loc in prepare(cli.compose_config([DAS])).locations]


@pytest.mark.parametrize("kind, damage", FILE_CASES, ids=[f"{k}-{d}" for k, d in FILE_CASES])
def test_damaged_input_file(kind, damage, tmp_path, monkeypatch, capsys, no_model_loads, das_locations):
    monkeypatch.chdir(tmp_path)
    name, good, wrong, overrides, named = INPUT_FILES[kind]
    good_bytes = interventions(das_locations) if good is None else good()
    folder = known_circuit_dir(tmp_path / "inputs", name) if kind.startswith("interpbench") else tmp_path / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    content = {"empty": b"", "truncated": good_bytes[: len(good_bytes) * 2 // 3], "wrong type": wrong(), "garbage": GARBAGE,
               "invalid UTF-8": NOT_UTF8}.get(damage)
    if content is not None:
        path.write_bytes(content)
    err = refused(["run", *overrides(path)], capsys)
    if damage == "missing" and kind.startswith("interpbench"):  # no config at all: not a checkpoint of either kind
        assert f"{path.parent}/config.json: no such file" in err, err
    else:
        assert named in err and (name in err or str(path) in err), err
    assert not (tmp_path / "results").exists(), "bad input must not create a run dir"


def test_good_input_files_pass_the_same_checks(tmp_path, das_locations):
    """The undamaged files of the table above pass (so the refusals come from the damage)."""
    from circuitlab.plan import prepare

    for kind, (name, good, _, overrides, _) in INPUT_FILES.items():
        folder = known_circuit_dir(tmp_path / kind.replace(" ", "_"), name) if kind.startswith("interpbench") else tmp_path / kind.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(interventions(das_locations) if good is None else good())
        prepare(cli.compose_config([o for o in overrides(folder / name)]))


@pytest.mark.parametrize("content, expected", [
    (jsonl({**GOOD_PAIR, "clean": ""}), "line 1: 'clean' is empty"),
    (jsonl({**GOOD_PAIR, "answer": 7}), "line 1: 'answer' must be a string, not a number"),
    (jsonl(GOOD_PAIR, {**GOOD_PAIR, "wrong": None}), "line 2: 'wrong' must be a string, not null"),
    (jsonl(GOOD_PAIR) + b'{"clean": "x", "corrupted"', "line 2 is not valid JSON"),
    (b"\n\n   \n", "the file is empty"),
    (jsonl(GOOD_PAIR) + b"\xff\n", "line 2 is not UTF-8 text"),
])
def test_pairs_lines_name_the_line(content, expected, tmp_path, monkeypatch, capsys, no_model_loads):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_bytes(content)
    err = refused(["run", "task=pairs", f"task.path={tmp_path / 'p.jsonl'}", "sweep=named_positions", "sweep.positions=[END]"], capsys)
    assert expected in err and "p.jsonl" in err
    assert not (tmp_path / "results").exists()


def test_interpbench_config_without_shape_fields(tmp_path, capsys, no_model_loads, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = known_circuit_dir(tmp_path, "ll_model_cfg.json")
    config = {k: v for k, v in known_config().items() if k != "d_vocab"}
    (directory / "ll_model_cfg.json").write_text(json.dumps(config))
    assert "ll_model_cfg.json lacks d_vocab" in refused(["run", "+experiment=known_circuit_scales", "model=local", f"model.path={directory}"], capsys)
    (directory / "ll_model_cfg.json").write_text(json.dumps({**known_config(), "n_heads": "two"}))
    assert "n_heads='two'" in refused(["run", "+experiment=known_circuit_scales", "model=local", f"model.path={directory}"], capsys)
    (directory / "ll_model_cfg.json").write_text(json.dumps({**known_config(), "act_fn": "wiggle"}))
    assert "not a config TransformerLens accepts" in refused(["run", "+experiment=known_circuit_scales", "model=local", f"model.path={directory}"], capsys)


def test_token_id_prompts_stay_in_the_vocabulary(tmp_path, capsys, no_model_loads, monkeypatch):
    """A checkpoint without a tokenizer reads prompts as token ids: one beyond d_vocab, or negative, is refused."""
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "ids"
    directory.mkdir()
    shutil.copy(KNOWN / "model.safetensors", directory)
    shutil.copy(KNOWN / "ll_model_cfg.json", directory)  # d_vocab 10, no tokenizer files
    overrides = ["+experiment=known_circuit_scales", "model=local", f"model.path={directory}", "task=pairs",
                 f"task.path={tmp_path / 'ids.jsonl'}", "sweep.positions=[END]", "method.metrics=[logit_diff]"]
    (tmp_path / "ids.jsonl").write_bytes(jsonl({"clean": "1 2 3", "corrupted": "1 2 4", "answer": "8", "wrong": "12"}))
    assert "task=token id 12 is not allowed; allowed: ids 0..9" in refused(["run", *overrides], capsys)
    (tmp_path / "ids.jsonl").write_bytes(jsonl({"clean": "1 -2 3", "corrupted": "1 2 4", "answer": "8", "wrong": "9"}))
    assert "task='1 -2 3' is not allowed; allowed: space-separated token ids >= 0" in refused(["run", *overrides], capsys)
    assert not (tmp_path / "results").exists()


# method.load: the wrong kind of run dir or file, refused before the model loads ------------------------------------


def test_method_load_of_the_wrong_kind_is_refused_before_loading(tmp_path, capsys, no_model_loads, das_locations, monkeypatch):
    monkeypatch.chdir(tmp_path)
    patching_run = tmp_path / "patching_run"
    patching_run.mkdir()
    (patching_run / "results.csv").write_text("experiment,method\nx,activation_patching\n")
    assert "holds no interventions.pt" in refused(["run", DAS, f"method.load={patching_run}"], capsys)
    other = tmp_path / "other.pt"
    other.write_bytes(torch_bytes({"intervention": "das", "low_rank_dimension": 1, "locations": ["resid_post|0|IO|"],
                                   "states": [{"basis": torch.zeros(80, 1)}]}))
    assert "missing resid_post|0|S1|" in refused(["run", DAS, f"method.load={other}"], capsys)
    narrow = tmp_path / "narrow.pt"
    narrow.write_bytes(torch_bytes({"intervention": "das", "low_rank_dimension": 1, "locations": das_locations,
                                    "states": [{"basis": torch.zeros(32, 1)} for _ in das_locations]}))
    assert "a 32x1 basis, 80 wide expected" in refused(["run", DAS, f"method.load={narrow}"], capsys)
    keys = tmp_path / "keys.pt"
    keys.write_bytes(torch_bytes({"weights": torch.zeros(2)}))
    assert "not the interventions.pt of a method=das run" in refused(["run", DAS, f"method.load={keys}"], capsys)
    boundless = tmp_path / "boundless.pt"
    boundless.write_bytes(interventions(das_locations))
    assert "method.intervention=boundless" in refused(["run", DAS, "method.intervention=boundless", f"method.load={boundless}"], capsys)
    assert not (tmp_path / "results").exists()


# vocabulary: a word the tokenizer does not know ----------------------------------------------------------------


def test_out_of_vocabulary_answer_drops_its_pair_and_all_dropped_is_one_line(tmp_path, capsys, no_model_loads, monkeypatch):
    from circuitlab.plan import prepare

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "p.jsonl"
    unknown_prompt = {k: v.replace("Mary", "Zebulon") if k in ("clean", "corrupted") else v for k, v in GOOD_PAIR.items()}
    path.write_bytes(jsonl(GOOD_PAIR, {**GOOD_PAIR, "answer": " Zebulon"}, {**GOOD_PAIR, "corrupted_answer": " Xanthippe"}, unknown_prompt))
    overrides = ["task=pairs", f"task.path={path}", "sweep=named_positions", "sweep.positions=[END]"]
    plan = prepare(cli.compose_config(overrides))
    assert plan.pairs.n_pairs == 1
    assert plan.pairs.dropped == {"an answer unknown to the tokenizer": 2, "a word unknown to the tokenizer": 1}
    path.write_bytes(jsonl({**GOOD_PAIR, "answer": " Zebulon"}, {**GOOD_PAIR, "wrong": " Xanthippe"}))
    err = refused(["run", *overrides], capsys)
    assert "p.jsonl: every pair has an answer unknown to the tokenizer" in err and "2 of 2" in err
    path.write_bytes(jsonl({**GOOD_PAIR, "track": [" Zebulon"]}))
    assert "tracked ' Zebulon' is a word this model's tokenizer does not know" in refused(["run", *overrides], capsys)
    assert not (tmp_path / "results").exists()


# values: zero, negative, NaN, inf, empty, null, and keys no schema has ------------------------------------------

VALUE_CASES = {
    "scales NaN": ([ABLATION, "method.scales=[0,nan]"], "method.scales=nan"),
    "scales inf": ([ABLATION, "method.scales=[0,inf]"], "method.scales=inf"),
    "scales -inf": ([ABLATION, "method.scales=[-inf]"], "method.scales=-inf"),
    "scales null": ([ABLATION, "method.scales=null"], "method.scales"),
    "scales empty": ([ABLATION, "method.scales=[]"], "method.scales=[]"),
    "memory budget negative": (["memory_budget_mb=-5"], "memory_budget_mb=-5"),
    "memory budget zero": (["memory_budget_mb=0"], "memory_budget_mb=0"),
    "memory budget NaN": (["memory_budget_mb=nan"], "memory_budget_mb"),
    "memory budget inf": (["memory_budget_mb=inf"], "memory_budget_mb"),
    "empty head group": (["sweep.streams=[z]", "sweep.heads=[[]]"], "sweep.heads=[[]]"),
    "an empty head group among others": (["sweep.streams=[z]", "sweep.heads=[[0,1],[]]"], "sweep.heads=[[0, 1], []]"),
    "empty head list": (["sweep.streams=[z]", "sweep.heads=[]"], "sweep.heads=[]"),
    "ioi n_prompts zero": (["task.n_prompts=0"], "task.n_prompts=0"),
    "ioi n_prompts negative": (["task.n_prompts=-4"], "task.n_prompts=-4"),
    "factual n_prompts zero": (["+experiment=factual_recall_heads", "task.n_prompts=0"], "task.n_prompts=0"),
    "repeat_first n_prompts negative": (["+experiment=known_circuit_scales", "task.n_prompts=-1"], "task.n_prompts=-1"),
    "addition n_prompts zero": (["+experiment=addition_path_to_logits", "task.n_prompts=0"], "task.n_prompts=0"),
    "counterfactual n_prompts zero": ([DAS, "task.n_prompts=0"], "task.n_prompts=0"),
    "counterfactual n_train negative": ([DAS, "task.n_train=-2"], "task.n_train=-2"),
    "fixed length zero": (["task.fixed_length=0"], "fixed_length"),
    "das batch size zero": ([DAS, "method.batch_size=0"], "method.batch_size=0"),
    "das batch size negative": ([DAS, "method.batch_size=-20"], "method.batch_size=-20"),
    "das epochs zero": ([DAS, "method.epochs=0"], "method.epochs=0"),
    "das lr zero": ([DAS, "method.lr=0"], "method.lr=0.0"),
    "das lr negative": ([DAS, "method.lr=-0.01"], "method.lr=-0.01"),
    "das lr NaN": ([DAS, "method.lr=nan"], "method.lr=nan"),
    "das lr inf": ([DAS, "method.lr=inf"], "method.lr=inf"),
    "das lr end factor above 1": ([DAS, "method.lr_end_factor=2"], "method.lr_end_factor=2.0"),
    "das lr decay steps negative": ([DAS, "method.lr_decay_steps=-1"], "method.lr_decay_steps=-1"),
    "das boundary lr zero": ([DAS, "method.boundary_lr=0"], "method.boundary_lr=0.0"),
    "das boundary penalty NaN": ([DAS, "method.boundary_penalty=nan"], "method.boundary_penalty=nan"),
    "das temperature zero": ([DAS, "method.temperature_end=0"], "method.temperature_end=0.0"),
    "das temperature inf": ([DAS, "method.temperature_start=inf"], "method.temperature_start=inf"),
    "das rank zero": ([DAS, "method.low_rank_dimension=0"], "method.low_rank_dimension=0"),
    "pca k negative": (["+experiment=toy_pca_ablation", "method.k=-1"], "method.k=-1"),
    "thresholds NaN": ([PATH, "method.thresholds=[nan]"], "method.thresholds=nan"),
    "thresholds negative": ([PATH, "method.thresholds=[0.05,-1]"], "method.thresholds=-1.0"),
    "thresholds null": ([PATH, "method.thresholds=null"], "method.thresholds"),
    "begin layer negative": ([PATH, "method.begin_layer=-1"], "method.begin_layer=-1"),
    "receivers null": ([PATH, "method.receivers=null"], "method.receivers"),
    "streams null": (["sweep.streams=null"], "sweep.streams"),
    "streams empty": (["sweep.streams=[]"], "sweep.streams=[]"),
    "metrics null": (["method.metrics=null"], "method.metrics"),
    "layers null": (["sweep.layers=null"], "sweep.layers=null"),
    "layers empty": (["sweep.layers=[]"], "sweep.layers=[]"),
    "positions null": (["sweep.positions=null"], "sweep.positions=null"),
    "positions empty": (["sweep.positions=[]"], "sweep.positions=[]"),
    "patterns null": (["task.patterns=null"], "task.patterns"),
    "patterns empty": (["task.patterns=[]"], "task.patterns=[]"),
    "templates null": (["task.templates=null"], "task.templates=null"),
    "templates empty": (["task.templates=[]"], "task.templates=[]"),
    "track null": (["task.track=null"], "task.track"),
    "base patterns empty": ([DAS, "task.base_patterns=[]"], "task.base_patterns=[]"),
    "source names unknown": ([DAS, "task.source_names=other"], "task.source_names=other"),
    "edge curve percentage above 100": (["+experiment=known_circuit_eap", "method.curve=[1,101]"], "method.curve=101"),
    "edge curve percentage NaN": (["+experiment=known_circuit_eap", "method.curve=[nan]"], "method.curve=nan"),
    "edge circuit size negative": (["+experiment=known_circuit_eap", "method.n_edges=-1"], "method.n_edges=-1"),
    "edge batch size zero": (["+experiment=known_circuit_eap", "method.batch_size=0"], "method.batch_size=0"),
    "edge sample zero": (["+experiment=known_circuit_eap", "method=edge_patching", "method.sample=0"], "method.sample=0"),
    "edge sample beyond the edges": (["+experiment=known_circuit_eap", "method=edge_patching", "method.sample=1000"], "method.sample=1000"),
    "edge ig steps negative": (["+experiment=known_circuit_eap", "method=eap_ig", "method.ig_steps=-2"], "method.ig_steps=-2"),
    "countries empty": (["+experiment=factual_recall_heads", "task.countries=[]"], "task.countries=[]"),
    "countries null": (["+experiment=factual_recall_heads", "task.countries=null"], "task.countries=null"),
    "analyses empty": (["+experiment=ioi_dla", "method.analyses=[]"], "method.analyses=[]"),
    "shard negative": (["sweep.shard=-1", "sweep.num_shards=2"], "sweep.shard=-1"),
    "shard count negative": (["sweep.num_shards=-2"], "sweep.num_shards=-2"),
    "shards beyond the points that patch anything": (["sweep.layers=[1]", "sweep.positions=[0,1,2]", "sweep.num_shards=2"], "sweep.num_shards=2"),
    "shards beyond points x scales": ([ABLATION, "sweep.streams=[mlp_out]", "sweep.layers=[0]", "method.scales=[0,1]", "sweep.num_shards=3"],
                                      "sweep.num_shards=3"),
    "shards of attribution estimates alone": (["+experiment=ioi_attribution", "method.compare_exact=false", "sweep.num_shards=2"], "sweep.num_shards=2"),
    "typo added with + in task": (["+task.n_promts=8"], "task.n_promts=8"),
    "typo added with + in method": ([DAS, "+method.epoch=3"], "method.epoch=3"),
    "typo added with + in sweep": (["+sweep.layer=[1]"], "sweep.layer=[1]"),
    "typo added with + in run": (["+run.resum=true"], "run.resum=True"),
    "typo added with + at the top": (["+memory_budget=512"], "memory_budget=512"),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_value(case, tmp_path, monkeypatch, capsys, no_model_loads):
    monkeypatch.chdir(tmp_path)
    overrides, expected = VALUE_CASES[case]
    preset = [] if any(o.startswith("+experiment=") for o in overrides) else ["+experiment=ioi_patching"]
    err = refused(["run", *preset, *overrides], capsys)
    assert expected in err, err
    assert not (tmp_path / "results").exists(), "bad input must not create a run dir"


def test_schema_typo_lists_the_allowed_keys(capsys, no_model_loads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(["run", "+experiment=ioi_patching", "+task.n_promts=8"], capsys)
    assert "n_prompts, split, patterns, templates" in err and "IOITaskConfig" in err


def test_null_memory_budget_and_valid_values_pass():
    from circuitlab.plan import prepare

    prepare(cli.compose_config(["+experiment=ioi_patching", "memory_budget_mb=null"]))
    prepare(cli.compose_config(["+experiment=ioi_patching", "memory_budget_mb=64", "sweep.streams=[z]", "sweep.heads=[[0,1],[2]]"]))
    prepare(cli.compose_config([ABLATION, "method.scales=[-1,0,0.5]"]))  # negative scales flip the value: allowed


# environment ----------------------------------------------------------------------------------------------------


def test_mps_where_it_is_unavailable(tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "device=mps is not allowed" in refused(["run", "+experiment=ioi_patching", "device=mps"], capsys)
    assert not (tmp_path / "results").exists()


def test_cuda_index_beyond_the_visible_devices(tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "device=cuda:3 is not allowed; allowed: auto, cpu, cuda, cuda:0..0" in refused(["run", "+experiment=ioi_patching", "device=cuda:3"], capsys)


@pytest.mark.parametrize("multirun", [[], ["-m"]])
def test_slurm_without_slurm(multirun, tmp_path, capsys, monkeypatch, no_model_loads):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compose.shutil, "which", lambda name: None)
    err = refused(["run", *multirun, "hydra/launcher=slurm", "+experiment=ioi_patching", "seed=0,1" if multirun else "seed=0"], capsys)
    assert "hydra/launcher=slurm" in err and "sbatch is not on PATH" in err
    assert not (tmp_path / "results").exists()


def test_local_gpus_without_cuda_falls_back_to_the_cpu_in_one_line(capsys, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    jobs = multirun.preflight_multirun(["hydra/launcher=local_gpus", "+experiment=ioi_patching", "seed=0,1"])
    assert len(jobs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["circuitlab: warning: hydra/launcher=local_gpus: no CUDA device is visible, so the jobs run one at a time on the CPU"]


# multirun: every job validated before the first runs --------------------------------------------------------------


def test_multirun_with_a_bad_second_job_runs_none(tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.chdir(tmp_path)
    err = refused(["run", "-m", "+experiment=ioi_patching", "task.n_prompts=8", "sweep.layers=[1],[9]"], capsys)
    assert "multirun job 1 of 2 (sweep.layers=[9])" in err and "sweep.layers=9 is not allowed" in err
    assert not (tmp_path / "results").exists() and not any(tmp_path.iterdir()), "no sweep dir, no job dir"


@pytest.mark.parametrize("overrides, expected", [
    (["+experiment=ioi_patching", "seed=0,1", "sweep.layers=[0],[9]"], "multirun job 1 of 4 (seed=0 sweep.layers=[9])"),
    (["+experiment=ioi_patching", "sweep.layers=choice([0],[1],[7])"], "multirun job 2 of 3 (sweep.layers=[7])"),
    (["+experiment=ioi_patching", "task.n_prompts=range(2,-2,-2)"], "multirun job 1 of 2 (task.n_prompts=0)"),
    (["+experiment=ioi_patching", "task=glob(ioi*)"], "(task=ioi_counterfactual): task.templates"),
    (["+experiment=ioi_patching", "seed=0,1", "+task.n_promts=3"], "task.n_promts=3 is not allowed"),
    (["+experiment=ioi_patching", "seed=interval(0,1)"], "seed=interval(0,1) is not allowed"),
    (["+experiment=ioi_patching", "seed=[1,"], "no viable alternative"),
    (["+experiment=ioi_patching", "task=glob(zz*)"], "task=glob(zz*) is not allowed"),
    (["+experiment=ioi_patching", "hydra.launcher.foo=1"], "hydra.launcher.foo"),
    (["+experiment=ioi_patching", "+experiment=nope,ioi_heads"], "experiment=nope"),
])
def test_multirun_sweep_syntax_is_expanded_and_every_job_checked(overrides, expected, tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.chdir(tmp_path)
    err = refused(["run", "-m", *overrides], capsys)
    assert expected in err, err
    assert not any(tmp_path.iterdir())


def test_sweep_jobs_expand_as_hydras_basic_sweeper():
    jobs = multirun.sweep_jobs(["+experiment=ioi_patching", "seed=0,1", "method.direction=choice(denoising,noising)", "task.n_prompts=range(8,24,8)"])
    assert len(jobs) == 8 and jobs[0] == ["+experiment=ioi_patching", "seed=0", "method.direction=denoising", "task.n_prompts=8"]
    assert jobs[-1] == ["+experiment=ioi_patching", "seed=1", "method.direction=noising", "task.n_prompts=16"]
    assert [job[1] for job in multirun.sweep_jobs(["+experiment=ioi_patching", "task=glob(ioi*)"])] == ["task=ioi", "task=ioi_counterfactual"]
    assert multirun.sweep_jobs(["seed=1", "seed=2,3"]) == [["seed=2"], ["seed=3"]]  # a key given twice: the last one counts


# figures: a damaged run is skipped, the others redrawn -----------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    from circuitlab.run import run_experiment

    run_dir = tmp_path_factory.mktemp("runs") / "good"
    run_experiment(cli.compose_config(["+experiment=ioi_patching", "task.n_prompts=4", "sweep.layers=[1]", "progress=false", "figures=false"]), run_dir)
    return run_dir


FIGURE_DAMAGE = {
    "results.csv empty": ("results.csv", lambda b: b""),
    "results.csv truncated": ("results.csv", lambda b: b[: len(b) // 2]),
    "results.csv cut at a line": ("results.csv", lambda b: b[: b.rindex(b",", 0, len(b) // 2)] + b"\n"),
    "results.csv garbage": ("results.csv", lambda b: GARBAGE + b"\n"),
    "results.csv not UTF-8": ("results.csv", lambda b: b.replace(b"resid_pre", b"resid_\xff\xfe", 1)),
    "results.csv value not a number": ("results.csv", lambda b: b.rsplit(b",", 1)[0] + b",0.1x\n"),
    "results.csv missing": ("results.csv", None),
    "manifest.json truncated": ("manifest.json", lambda b: b[: len(b) // 2]),
    "manifest.json empty": ("manifest.json", lambda b: b""),
    "manifest.json wrong type": ("manifest.json", lambda b: b"[1, 2]\n"),
}


def test_figures_skip_damaged_runs_and_redraw_the_rest(good_run, tmp_path, capsys):
    root = tmp_path / "results"
    shutil.copytree(good_run, root / "good")
    for case, (name, damage) in FIGURE_DAMAGE.items():
        run_dir = root / case.replace(" ", "_")
        shutil.copytree(good_run, run_dir)
        if damage is None:
            (run_dir / name).unlink()
        else:
            (run_dir / name).write_bytes(damage((run_dir / name).read_bytes()))
    cli.main(["figures", str(root)])  # returns: exit code 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == len(FIGURE_DAMAGE), err
    for case, (name, _) in FIGURE_DAMAGE.items():
        assert sum(f"skipped {root / case.replace(' ', '_')}: " in ln and name in ln for ln in lines) == 1, (case, err)
    assert (root / "good" / "figures" / "patching_heatmap.png").is_file() and "good/figures/patching_heatmap.png" in out


def test_figures_with_every_run_damaged_exit_2(good_run, tmp_path, capsys):
    shutil.copytree(good_run, tmp_path / "only")
    (tmp_path / "only" / "results.csv").write_bytes(b"experiment,method\n")
    assert f"{tmp_path / 'only' / 'results.csv'}: lacks the columns" in refused(["figures", str(tmp_path)], capsys)  # one run: its line
    shutil.copytree(tmp_path / "only", tmp_path / "second")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["figures", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all("skipped" in ln for ln in lines[:2]) and lines[2].startswith("circuitlab: error: figures: none of the 2 runs")


def test_check_readable_names_the_file(good_run, tmp_path):
    from circuitlab.figures import check_readable

    check_readable(good_run)
    shutil.copytree(good_run, tmp_path / "r")
    (tmp_path / "r" / "results.csv").write_bytes(b"")
    with pytest.raises(CircuitlabError, match=r"results.csv: empty"):
        check_readable(tmp_path / "r")
