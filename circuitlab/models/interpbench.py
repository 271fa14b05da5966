"""InterpBench-style checkpoints: a TransformerLens config and a state dict (seed 004).

A checkpoint dir holds `ll_model_cfg.json` / `.yaml` (a `HookedTransformerConfig` as a dict) and `ll_model.pth`
(a state dict, read with `torch.load(weights_only=True)`) or `model.safetensors`. InterpBench itself ships the
config pickled (`ll_model_cfg.pkl`); unpickling runs code, so it is read only with `model.allow_pickle=true`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitlab.errors import CircuitlabError, ConfigError

CONFIG_FILES = ("ll_model_cfg.json", "ll_model_cfg.yaml", "ll_model_cfg.yml")
PICKLED_CONFIG = "ll_model_cfg.pkl"
WEIGHT_FILES = ("ll_model.pth", "model.safetensors")



def is_checkpoint(directory: Path) -> bool:
    """Whether `directory` is laid out as an InterpBench checkpoint (it holds one of the config files)."""
    return any((Path(directory) / name).is_file() for name in (*CONFIG_FILES, PICKLED_CONFIG))


def require_weights(directory: Path) -> None:
    if not any((Path(directory) / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError("model.path", str(directory), f"a dir holding {' or '.join(WEIGHT_FILES)} beside its config")


class IdTokenizer:
    """For checkpoints without a tokenizer (InterpBench ships none): text is space-separated token ids
    ("0 3 5"), the BOS token is id 0 and tokens print as their ids."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        try:
            ids = [int(word) for word in text.split()]
        except ValueError:
            ids = [-1]
        if any(i < 0 for i in ids):
            raise ConfigError("task", repr(text), "space-separated token ids >= 0 (this model has no tokenizer)")
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [str(int(i)) for i in ids]

    def convert_tokens_to_ids(self, token: str) -> int:
        return int(token)


def read_config(directory: Path, allow_pickle: bool = False) -> dict:
    """The TransformerLens config dict of a checkpoint dir, checked: a file that is empty, not UTF-8, not JSON / YAML,
    not a mapping, short of a shape field or refused by HookedTransformerConfig ends in one line naming it."""
    directory = Path(directory)
    for name in CONFIG_FILES:
        path = directory / name
        if path.is_file():
            return check_config(path, _parse(path))
    if (directory / PICKLED_CONFIG).is_file():
        if not allow_pickle:
            raise ConfigError("model.allow_pickle", "false", f"true to unpickle {directory / PICKLED_CONFIG} (unpickling runs code: "
                              f"only for files you trust), or save its dict as {CONFIG_FILES[0]}")
        import pickle

        path = directory / PICKLED_CONFIG
        try:
            with open(path, "rb") as f:
                config = pickle.load(f)  # noqa: S301 - the user asked for it by name (model.allow_pickle=true)
        except Exception as err:  # empty, truncated or garbage: whatever unpickling raises
            raise CircuitlabError(f"model.path={directory}: {path.name} cannot be unpickled ({_first_line(err)})") from None
        if not isinstance(config, dict) and callable(getattr(config, "to_dict", None)):
            config = config.to_dict()
        return check_config(path, config)
    raise ConfigError("model.path", str(directory), f"a dir holding {' or '.join(CONFIG_FILES)} (or {PICKLED_CONFIG}) and {' or '.join(WEIGHT_FILES)}")


def _parse(path: Path):
    where = f"model.path={path.parent}: {path.name}"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CircuitlabError(f"{where} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise CircuitlabError(f"{where} cannot be read ({err.strerror or err})") from None
    if not text.strip():
        raise CircuitlabError(f"{where} is empty")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise CircuitlabError(f"{where} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CircuitlabError(f"{where} is not valid YAML ({_first_line(err)})") from None


SHAPE_FIELDS = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab")


def check_config(path: Path, config) -> dict:
    """A mapping of HookedTransformerConfig fields with the shape circuitlab plans with, that TransformerLens accepts."""
    where = f"model.path={path.parent}: {path.name}"
    if not isinstance(config, dict):
        raise CircuitlabError(f"{where} holds {type(config).__name__}, not a mapping of HookedTransformerConfig fields")
    needed = [*SHAPE_FIELDS, *(() if config.get("attn_only") else ("d_mlp",))]
    for key in needed:
        value = config.get(key)
        if key not in config:
            raise CircuitlabError(f"{where} lacks {key} (needed: {', '.join(needed)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CircuitlabError(f"{where} has {key}={value!r}; it must be a positive integer")
    fields = {k: v for k, v in config.items() if k in HookedTransformerConfig.__dataclass_fields__}
    try:
        HookedTransformerConfig(**_plain_values({**fields, "device": "cpu"}))
    except Exception as err:  # TransformerLens' own checks (an unknown act_fn, inconsistent widths, ...)
        raise CircuitlabError(f"{where} is not a config TransformerLens accepts ({_first_line(err)})") from None
    return config


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The weights, safely: safetensors, or torch.load with weights_only=True."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(directory / "model.safetensors")
    path = directory / "ll_model.pth"
    if not path.is_file():
        raise ConfigError("model.path", str(directory), f"a dir holding {' or '.join(WEIGHT_FILES)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe pickle inside the .pth: refused by weights_only
        raise ConfigError("model.path", str(path), "a plain state dict of tensors (weights_only loading refused it: "
                          f"{str(err).splitlines()[0][:120]})") from None


def load_checkpoint(directory: Path, allow_pickle: bool = False, device: str = "cpu") -> HookedTransformer:
    """A HookedTransformer from an InterpBench-style checkpoint dir."""
    config = {k: v for k, v in read_config(directory, allow_pickle).items() if k in HookedTransformerConfig.__dataclass_fields__}
    config["device"] = device
    model = HookedTransformer(HookedTransformerConfig(**_plain_values(config)))
    try:
        missing, unexpected = model.load_state_dict(read_state_dict(directory), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ConfigError("model.path", str(directory), "weights that match the config", hint=str(err).splitlines()[-1].strip()[:160]) from None
    missing = [k for k in missing if not k.endswith((".mask", ".IGNORE"))]  # buffers rebuilt from the config
    if missing or unexpected:
        raise ConfigError("model.path", str(directory), "weights that match the config",
                          hint=f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval()
    return model


def save_checkpoint(model: HookedTransformer, directory: Path, safetensors: bool = False) -> None:
    """Write `ll_model_cfg.json` and the weights: `ll_model.pth` (InterpBench's format) or `model.safetensors`
    (without the attention-mask buffers TransformerLens rebuilds)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.cfg.to_dict().items() if _is_json(v)}
    (directory / CONFIG_FILES[0]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if safetensors:
        from safetensors.torch import save_file

        weights = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith((".mask", ".IGNORE"))}
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(model.state_dict(), directory / "ll_model.pth")


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def _plain_values(config: dict) -> dict:
    """JSON / YAML give lists where the config wants tuples or dtypes as text."""
    if isinstance(config.get("dtype"), str):
        config["dtype"] = getattr(torch, config["dtype"].removeprefix("torch."))
    return config
