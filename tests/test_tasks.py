"""The factual-recall and JSONL prompt-pair tasks."""

from __future__ import annotations

import json

import pytest
import torch

from circuitlab import cli
from circuitlab.config import FactualTaskConfig, PairsTaskConfig
from circuitlab.errors import CircuitlabError
from circuitlab.models import loading
from circuitlab.config import ModelConfig
from circuitlab.tasks import factual, pairs


@pytest.fixture(scope="module")
def facts_model():
    return loading.load_model(ModelConfig(source="embedded", name="toy-facts"), device="cpu")


def bos(model):
    return model.tokenizer.bos_token_id


def test_toy_facts_knows_every_capital(facts_model):
    from circuitlab.models import toy

    every = toy.facts_prompt_pairs(toy.RECIPES["toy-facts"], facts_model.tokenizer, None, 0)
    assert every.n_pairs == len(factual.CAPITALS) * len(factual.TEMPLATES)
    assert toy.accuracy(facts_model, every) == 1.0


def test_factual_pairs_seed_002(facts_model):
    cfg = FactualTaskConfig(pairs=[["Italy", "Spain"]], templates="capital_of")
    data = factual.build_pairs(cfg, facts_model.tokenizer, [bos(facts_model)], bos(facts_model), 0)
    assert data.clean_texts == ["The capital of Italy is"] and data.corrupted_texts == ["The capital of Spain is"]
    tokens = facts_model.tokenizer.convert_ids_to_tokens([int(data.answer_tokens[0]), int(data.wrong_tokens[0])])
    assert tokens == ["Rome", "Madrid"]
    country = int(data.named_positions["COUNTRY"][0])
    assert data.first_prompt_tokens[country] == "Italy"
    assert (data.clean_tokens != data.corrupted_tokens).nonzero()[:, 1].tolist() == [country]


def test_factual_random_pairs_differ(facts_model):
    data = factual.build_pairs(FactualTaskConfig(n_prompts=20), facts_model.tokenizer, [bos(facts_model)], bos(facts_model), 3)
    assert data.n_pairs == 20 and bool((data.answer_tokens != data.wrong_tokens).all())


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {"clean": "When Mary and John went to the park, John gave the ball to",
        "corrupted": "When Mary and John went to the park, Anna gave the ball to",
        "answer": " Mary", "wrong": " John", "track": [" Anna"]}


def test_pairs_from_jsonl(tmp_path, toy_model):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "clean": GOOD["clean"].replace("park", "store"), "corrupted": GOOD["corrupted"].replace("park", "store")}])
    data = pairs.build_pairs(PairsTaskConfig(path=str(path)), toy_model.tokenizer, [bos(toy_model)], bos(toy_model), 0)
    assert data.n_pairs == 2 and data.track == (" Anna",)
    assert torch.equal(data.named_positions["END"], data.lengths - 1)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2 is not valid JSON"),
        (json.dumps({"clean": "a", "corrupted": "b", "answer": " Mary"}), "line 2 lacks field 'wrong'"),
        (json.dumps(["a list"]), "line 2 is not a JSON object"),
        (json.dumps({**GOOD, "track": " Anna"}), "line 2: 'track' must be a list"),
        (json.dumps({**GOOD, "corrupted": "When Mary went"}), "line 2: clean and corrupted prompts have"),
        (json.dumps({**GOOD, "answer": " Mary John"}), "line 2: answer ' Mary John' is not a single token"),
    ],
)
def test_malformed_lines_are_reported_by_number(tmp_path, toy_model, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line])
    with pytest.raises(CircuitlabError, match=message):
        cfg = PairsTaskConfig(path=str(path))
        pairs.validate_config(cfg)
        pairs.build_pairs(cfg, toy_model.tokenizer, [bos(toy_model)], bos(toy_model), 0)


def test_pairs_task_runs_end_to_end_with_tracked_tokens(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD])
    overrides = ["task=pairs", f"task.path={path}", "sweep=named_positions", "sweep.positions=[END,all]",
                 "sweep.streams=[resid_pre]", "method.metrics=[logit_diff,prob]", "progress=false", "figures=false"]
    from circuitlab.run import run_experiment

    run_experiment(cli.compose_config(overrides), tmp_path / "run")
    import pandas as pd

    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert "prob:Anna" in set(frame.metric)


def test_missing_jsonl_file_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "task=pairs", "task.path=/nonexistent.jsonl", "sweep=named_positions", "sweep.positions=[END]"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "circuitlab: error: task.path=/nonexistent.jsonl: no such file"
