"""The off-by-k addition task and the embedded toy-addition model."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from circuitlab.config import AdditionTaskConfig, ModelConfig
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.models import loading, toy, toy_addition
from circuitlab.tasks import addition

ADDITION_DIR = loading.EMBEDDED_DIR / "toy-addition"


@pytest.fixture(scope="module")
def addition_model():
    return loading.load_model(ModelConfig(source="embedded", name="toy-addition"), device="cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return loading.load_tokenizer(ModelConfig(source="embedded", name="toy-addition"))


def build(tokenizer, seed=0, **fields):
    bos = tokenizer.bos_token_id
    return addition.build_pairs(AdditionTaskConfig(**fields), tokenizer, [bos], bos, seed)


def parse(text: str) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
    """(a, b, shown sum) of each demonstration and the query pair of a prompt text."""
    *lines, query = text.split("\n")
    demos = [tuple(int(x) for x in line.replace("+", "=").split("=")) for line in lines]
    return demos, tuple(int(x) for x in query.rstrip("=").split("+"))


def test_tokenizer_round_trips(tokenizer):
    ids = tokenizer("2+3=5\n4+1=", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["2", "+", "3", "=", "5", "\n", "4", "+", "1", "="]
    assert tokenizer.decode(ids) == "2+3=5\n4+1="
    assert [tokenizer.convert_tokens_to_ids(str(n)) for n in range(21)] == [
        tokenizer(str(n), add_special_tokens=False)["input_ids"][0] for n in range(21)
    ]
    assert tokenizer.unk_token_id not in [tokenizer.convert_tokens_to_ids(str(n)) for n in range(21)]


@pytest.mark.parametrize("setting", addition.SETTINGS)
@pytest.mark.parametrize("offset", [1, -2])
def test_settings_hold(tokenizer, setting, offset):
    data = build(tokenizer, n_prompts=60, setting=setting, offset=offset, seed=7)
    assert data.n_pairs == 60 and not data.dropped
    for clean, corrupted in zip(data.clean_texts, data.corrupted_texts):
        demos, query = parse(clean)
        bad_demos, bad_query = parse(corrupted)
        pairs = [(a, b) for a, b, _ in demos]
        assert len(demos) == 4 and len(set(pairs)) == 4 and bad_query == query
        assert all(c == a + b for a, b, c in demos) and all(c == a + b + offset for a, b, c in bad_demos)
        assert min(min(a, b, c) for a, b, c in demos + bad_demos) >= 0 and sum(query) + offset >= 0
        sums = {a + b for a, b in pairs}
        assert query not in pairs
        if setting == "setting1":
            assert sum(query) not in sums
        if setting == "setting2":
            assert sum(query) in sums
        assert all(0 <= x <= 9 for pair in pairs + [query] for x in pair)


def test_seeded_generation(tokenizer):
    a, b, c = (build(tokenizer, seed=s, n_prompts=20) for s in (3, 3, 4))
    assert a.clean_texts == b.clean_texts and torch.equal(a.clean_tokens, b.clean_tokens)
    assert a.clean_texts != c.clean_texts


def test_pairs_are_aligned_and_answers_right(tokenizer):
    data = build(tokenizer, n_prompts=40, offset=2, n_demos=3, setting="normal")
    assert data.clean_texts[0].count("\n") == 3 and data.same_length
    rows = torch.arange(data.n_pairs)
    pos = data.named_positions
    assert torch.equal(pos["END"], data.lengths - 1)
    for i, text in enumerate(data.clean_texts):
        _, (a, b) = parse(text)
        tokens = tokenizer.convert_ids_to_tokens(data.clean_tokens[i].tolist())
        assert tokens[int(pos["QA"][i])] == str(a) and tokens[int(pos["QB"][i])] == str(b) and tokens[-1] == "="
        assert tokenizer.convert_ids_to_tokens([int(data.answer_tokens[i]), int(data.wrong_tokens[i])]) == [str(a + b), str(a + b + 2)]
    # only the demonstration sums differ between the normal and the contrast prompt
    differs = (data.clean_tokens != data.corrupted_tokens).nonzero()[:, 1].unique().tolist()
    assert differs and all(data.first_prompt_tokens[p - 1] == "=" for p in differs)
    assert torch.equal(data.clean_tokens[rows, pos["END"]], data.corrupted_tokens[rows, pos["END"]])


def test_answers_not_single_tokens(tokenizer):
    data = build(tokenizer, n_prompts=100, offset=10)  # the toy vocabulary stops at 20
    assert 0 < data.n_pairs < 100 and set(data.dropped) == {"a number not a known token"}
    assert sum(data.dropped.values()) == 100 - data.n_pairs and (data.wrong_tokens != tokenizer.unk_token_id).all()
    assert tokenizer.unk_token_id not in data.clean_tokens and tokenizer.unk_token_id not in data.corrupted_tokens
    with pytest.raises(CircuitlabError, match=r"no prompt pairs left after filtering \(dropped a number not a known token: 10\)"):
        build(tokenizer, n_prompts=10, nmax=99, offset=50)


class DigitTokenizer:
    """A digit-level stand-in for Gemma's tokenizer: each character is one token. As in GPT-2, the unknown token
    is the BOS token (id 0 here)."""

    unk_token_id = bos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


def test_digit_tokenizer_last_token_and_length_drops():
    digits = DigitTokenizer()
    with pytest.raises(CircuitlabError, match="^task.answer_token=whole: no answer is a single token .*; task.answer_token=last uses"):
        addition.build_pairs(AdditionTaskConfig(nmax=99, n_prompts=20), digits, [0], 0, 0)
    data = addition.build_pairs(AdditionTaskConfig(nmax=99, n_prompts=200, answer_token="last"), digits, [0], 0, 0)
    assert data.dropped["clean/corrupted lengths differ"] > 0 and data.n_pairs + sum(data.dropped.values()) == 200
    for i, text in enumerate(data.clean_texts):
        _, (a, b) = parse(text)
        assert (chr(int(data.answer_tokens[i])), chr(int(data.wrong_tokens[i]))) == (str(a + b)[-1], str(a + b + 1)[-1])
        assert data.first_prompt_tokens and text.endswith(f"{a}+{b}=")
        qa, qb = int(data.named_positions["QA"][i]), int(data.named_positions["QB"][i])
        assert "".join(digits.convert_ids_to_tokens(data.clean_tokens[i, qa - len(str(a)) + 1 : qb + 1].tolist())) == f"{a}+{b}"


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


GOOD = {"demonstration": [[1, 2], [3, 4], [5, 0], [2, 2], [7, 1]], "inference": [4, 4]}


def test_jsonl(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD, "", {**GOOD, "inference": [0, 9]}])
    data = build(tokenizer, path=path, n_demos=4)
    assert data.clean_texts == ["1+2=3\n3+4=7\n5+0=5\n2+2=4\n4+4=", "1+2=3\n3+4=7\n5+0=5\n2+2=4\n0+9="]
    assert data.corrupted_texts[0] == "1+2=4\n3+4=8\n5+0=6\n2+2=5\n4+4="
    assert build(tokenizer, path=path, n_prompts=1).n_pairs == 1
    path = write_jsonl(tmp_path / "b.jsonl", [GOOD, {**GOOD, "inference": [0, 1]}])
    data = build(tokenizer, path=path, offset=-3)  # 0+1-3 < 0
    assert data.n_pairs == 1 and data.dropped == {"a shown sum below zero": 1} and data.corrupted_texts[0].startswith("1+2=0\n")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{oops", "line 3 is not valid JSON"),
        (json.dumps({"demonstration": [[1, 2]]}), "line 3 is not"),
        (json.dumps({**GOOD, "inference": [1, -2]}), "line 3 is not"),
        (json.dumps({**GOOD, "demonstration": [[1, 2, 3]]}), "line 3 is not"),
        (json.dumps({**GOOD, "demonstration": GOOD["demonstration"][:2]}), "line 3 has 2 demonstrations; task.n_demos=4"),
    ],
)
def test_jsonl_malformed_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", line])
    with pytest.raises(CircuitlabError, match=message):
        addition.validate_config(AdditionTaskConfig(path=path))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"setting": "setting3"}, "task.setting=setting3"),
        ({"nmax": 50}, "task.nmax=50"),
        ({"n_demos": 0}, "task.n_demos=0"),
        ({"offset": 0}, "task.offset=0"),
        ({"offset": -19}, "task.offset=-19"),
        ({"n_prompts": 0}, "task.n_prompts=0"),
        ({"answer_token": "first"}, "task.answer_token=first"),
    ],
)
def test_bad_config_values(fields, field):
    with pytest.raises(ConfigError, match=field):
        addition.validate_config(AdditionTaskConfig(**fields))


def test_missing_file_and_impossible_settings(tokenizer):
    with pytest.raises(CircuitlabError, match="^task.path=/nonexistent.jsonl: no such file$"):
        addition.validate_config(AdditionTaskConfig(path="/nonexistent.jsonl"))
    with pytest.raises(CircuitlabError, match="task.n_demos=95: cannot draw that many distinct demonstrations"):
        build(tokenizer, n_demos=95)
    with pytest.raises(CircuitlabError, match="setting2: no other pair has the sum 0"):
        addition.sample_prompt(random.Random(0), 2, 9, 1, "setting2", query=(0, 0))


def test_training_prompts_never_show_heldout_pairs(tokenizer):
    """Every training prompt: 8 demonstrations and a query of training pairs, one offset, a target at each `=`."""
    recipe = dataclasses.replace(toy.RECIPES["toy-addition"], train_pool=300)
    train = toy_addition.training_set(recipe, tokenizer)
    held = toy_addition.heldout_pairs(recipe)
    assert len(held) == 20 and train.tokens.shape == (300, recipe.n_ctx)
    for tokens, targets in zip(train.tokens.tolist(), train.targets.tolist()):
        words = tokenizer.convert_ids_to_tokens(tokens)
        answers = [tokenizer.convert_ids_to_tokens(t) for t in targets if t != toy_addition.IGNORE]
        assert words[0] == tokenizer.bos_token and len(answers) == 9
        pairs = [(int(words[i - 3]), int(words[i - 1])) for i, w in enumerate(words) if w == "="]
        assert not set(pairs) & held and len(set(pairs)) == 9
        offsets = {int(c) - a - b for (a, b), c in zip(pairs, answers)}
        assert len(offsets) == 1 and offsets <= set(toy_addition.OFFSETS)
        assert sum(pairs[-1]) not in {a + b for a, b in pairs[:-1]}  # setting1


@pytest.mark.parametrize("offset", toy_addition.BAR_OFFSETS)
@pytest.mark.parametrize("shots", toy_addition.BAR_SHOTS)
def test_toy_addition_heldout_accuracy(addition_model, tokenizer, offset, shots):
    """>= 95% on queries whose (a, b) pair was never shown in training, on a fresh draw."""
    recipe = toy.RECIPES["toy-addition"]
    pairs = toy_addition.heldout_prompt_pairs(recipe, tokenizer, 200, shots, offset, seed=4242 + shots)
    queries = {parse(text)[1] for text in pairs.clean_texts}
    assert queries <= toy_addition.heldout_pairs(recipe) and pairs.n_pairs == 200
    assert toy_addition.contrast_accuracy(addition_model, pairs) >= 0.95


def test_toy_addition_runs_through_the_task(addition_model, tokenizer):
    """The task's own prompts on the shipped model: the normal prompts answer a+b, the contrast ones a+b+1."""
    data = build(tokenizer, n_prompts=100, seed=5)
    with torch.no_grad():
        rows = torch.arange(data.n_pairs)
        clean = addition_model(data.clean_tokens)[rows, data.final_positions].argmax(-1)
        corrupted = addition_model(data.corrupted_tokens)[rows, data.final_positions].argmax(-1)
    assert (clean == data.answer_tokens).float().mean() >= 0.95
    assert (corrupted == data.wrong_tokens).float().mean() >= 0.95


def test_transformers_loads_toy_addition(addition_model, tokenizer):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(ADDITION_DIR), local_files_only=True).eval()
    data = build(tokenizer, n_prompts=8)
    centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(centre(hf(data.clean_tokens).logits), centre(addition_model(data.clean_tokens)), atol=1e-3, rtol=0)
    assert addition_model.tokenizer.convert_ids_to_tokens(addition_model.to_tokens("2+3=5\n4+1=")[0].tolist())[1:] == list("2+3=5\n4+1=")


@pytest.mark.slow
def test_recipe_reproduces_shipped_toy_addition(tmp_path):
    """`circuitlab train-toy task=addition` reproduces the shipped toy-addition bitwise (same torch build and CPU)."""
    from safetensors.torch import load_file

    report = toy.train_toy("toy-addition", tmp_path, progress=False)
    shipped = json.loads((ADDITION_DIR / "recipe.json").read_text())
    assert report["recipe"] == shipped["recipe"] and report["heldout_min_accuracy"] >= 0.95
    ours, theirs = load_file(str(tmp_path / "model.safetensors")), load_file(str(ADDITION_DIR / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert (tmp_path / "tokenizer.json").read_text() == (ADDITION_DIR / "tokenizer.json").read_text()


def test_train_toy_command_is_seeded(tmp_path, capsys, monkeypatch):
    """`circuitlab train-toy task=addition` (2 steps of a small pool here) writes the same weights twice."""
    from safetensors.torch import load_file

    from circuitlab import cli

    small = dataclasses.replace(toy.RECIPES["toy-addition"], train_pool=256, eval_prompts=10)
    monkeypatch.setitem(toy.RECIPES, "toy-addition", small)
    threads = torch.get_num_threads()
    for name in ("a", "b"):
        cli.main(["train-toy", "task=addition", "steps=2", f"out={tmp_path / name}"])
    assert torch.get_num_threads() == threads
    assert "toy-addition: heldout_min_accuracy" in capsys.readouterr().out
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "recipe.json").read_text())["recipe"]["steps"] == 2
