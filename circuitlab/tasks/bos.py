"""The tokens every prompt starts with (`model.bos`) and the pad id, one rule for every task and split; and what the
manifest records of them."""

from __future__ import annotations

from circuitlab.errors import ConfigError


def special_ids(tokenizer, bos: str = "tokenizer") -> tuple[list[int], int]:
    """(prefix, pad id) the tasks build prompts with, one rule for every split: the prefix is what `model.bos` says
    (`tokenizer`: its BOS, else its EOS; `none`; or a token of the vocabulary), the pad the tokenizer's pad, else
    the BOS, else 0 (padding is never read)."""
    prefix = bos_prefix(tokenizer, bos)
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = next((i for i in (tokenizer.pad_token_id, fallback, *prefix) if i is not None), 0)
    return prefix, pad


def bos_prefix(tokenizer, bos: str) -> list[int]:
    """The token ids `model.bos` puts before every prompt; one line when the setting names no token of this
    tokenizer (never its unknown token)."""
    if bos == "none":
        return []
    if bos == "tokenizer":
        token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if token is None:
            raise ConfigError("model.bos", bos, "none, or a token of the vocabulary (this tokenizer names no BOS or EOS token)")
        return [int(token)]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if not isinstance(bos, str) or bos not in vocab:
        raise ConfigError("model.bos", bos, "tokenizer, none, or one token of the model's vocabulary written out, e.g. "
                          f"{_bos_example(tokenizer)}", hint="not a token of this tokenizer")
    return [int(vocab[bos])]


def _bos_example(tokenizer) -> str:
    names = [getattr(tokenizer, f"{kind}_token", None) for kind in ("bos", "eos", "pad")]
    return next((str(n) for n in names if isinstance(n, str) and n), "<|endoftext|>")


def bos_record(tokenizer, bos: str) -> dict:
    """What the manifest and the report say of the BOS: the setting, and the token(s) it put first."""
    prefix = bos_prefix(tokenizer, bos)
    return {"setting": bos, "ids": prefix, "tokens": [str(t) for t in tokenizer.convert_ids_to_tokens(prefix)] if prefix else []}
