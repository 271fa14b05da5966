"""The IOI task: splits, patterns, corruptions, named positions, filtering."""

from __future__ import annotations

import pytest
import torch

from circuitlab.config import IOITaskConfig
from circuitlab.errors import CircuitlabError
from circuitlab.tasks import ioi
from tests.conftest import ioi_pairs


def test_train_test_disjoint_in_names_places_objects_templates():
    train = ioi.split_lists("train", list(ioi.TEMPLATES))
    test = ioi.split_lists("test", list(ioi.TEMPLATES))
    for a, b in zip(train, test):
        assert a and b and not set(a) & set(b)


@pytest.mark.parametrize("corruption", ["abc", "swap"])
def test_named_positions_hold_the_names(toy_model, corruption):
    pairs = ioi_pairs(toy_model, n_prompts=40, templates="all", split="all", corruption=corruption)
    rows = torch.arange(pairs.n_pairs)
    pos = pairs.named_positions
    clean = pairs.clean_tokens
    assert torch.equal(clean[rows, pos["IO"]], pairs.answer_tokens)
    assert torch.equal(clean[rows, pos["S1"]], pairs.wrong_tokens)
    assert torch.equal(clean[rows, pos["S2"]], pairs.wrong_tokens)
    assert torch.equal(pos["END"], pairs.lengths - 1)
    differs = clean != pairs.corrupted_tokens
    if corruption == "abc":  # only S2 changes
        expected = torch.zeros_like(differs)
        expected[rows, pos["S2"]] = True
        assert torch.equal(differs, expected)
    else:  # IO and S swap everywhere
        assert torch.equal(pairs.corrupted_tokens[rows, pos["IO"]], pairs.wrong_tokens)
        assert torch.equal(pairs.corrupted_tokens[rows, pos["S2"]], pairs.answer_tokens)


def test_patterns_balanced_and_placed(toy_model):
    pairs = ioi_pairs(toy_model, n_prompts=20, templates="when")
    io_first = pairs.named_positions["IO"] < pairs.named_positions["S1"]
    assert io_first.sum() == 10  # ABB and BAB alternate


def test_test_split_uses_test_names_only(toy_model):
    pairs = ioi_pairs(toy_model, n_prompts=30, split="test")
    test_names = set(ioi.split_lists("test", ["when"])[0])
    names = {w for text in pairs.clean_texts for w in text.replace(",", " ").split() if w in ioi.NAMES}
    assert names <= test_names


class SplittingTokenizer:
    """A word-level stand-in for a BPE tokenizer: names longer than five letters become two tokens."""

    def __init__(self):
        self.vocab: dict[str, int] = {"<bos>": 0}

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for word in text.replace(",", " ,").replace(".", " .").split():
            pieces = [word[:3], word[3:]] if word in ioi.NAMES and len(word) > 5 else [word]
            ids += [self._id(p) for p in pieces]
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids):
        inverse = {v: k for k, v in self.vocab.items()}
        return [inverse[i] for i in ids]


def test_multi_token_names_are_dropped_and_counted():
    prompts = ioi.sample_prompts(__import__("random").Random(0), 60, ioi.NAMES, ioi.PLACES, ioi.OBJECTS, ["when"], ["ABB", "BAB"])
    pairs = ioi.tokenize_prompts(prompts, SplittingTokenizer(), [0], 0)
    long_name = lambda p: max(len(p.io), len(p.s), len(p.third)) > 5  # noqa: E731
    assert pairs.dropped["names not single tokens"] == sum(long_name(p) for p in prompts)
    assert pairs.n_pairs == sum(not long_name(p) for p in prompts)


def test_fixed_length_and_empty_set(toy_model):
    pairs = ioi_pairs(toy_model, n_prompts=30, templates="all", split="all")
    length = int(pairs.lengths[0])
    bos = toy_model.tokenizer.bos_token_id
    cfg = IOITaskConfig(n_prompts=30, templates="all", split="all", fixed_length=length)
    fixed = ioi.build_pairs(cfg, toy_model.tokenizer, [bos], bos, 0)
    assert fixed.same_length and int(fixed.lengths[0]) == length
    with pytest.raises(CircuitlabError, match="no prompt pairs left"):
        ioi.build_pairs(IOITaskConfig(fixed_length=2), toy_model.tokenizer, [bos], bos, 0)
