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

from circuitlab.errors import ConfigError

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
            return {"input_ids": [int(word) for word in text.split()]}
        except ValueError:
            raise ConfigError("task", repr(text), "space-separated token ids (this model has no tokenizer)") from None

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [str(int(i)) for i in ids]

    def convert_tokens_to_ids(self, token: str) -> int:
        return int(token)


def read_config(directory: Path, allow_pickle: bool = False) -> dict:
    """The TransformerLens config dict of a checkpoint dir."""
    directory = Path(directory)
    for name in CONFIG_FILES:
        path = directory / name
        if path.is_file():
            if path.suffix == ".json":
                return json.loads(path.read_text())
            import yaml

            return yaml.safe_load(path.read_text())
    if (directory / PICKLED_CONFIG).is_file():
        if not allow_pickle:
            raise ConfigError("model.allow_pickle", "false", f"true to unpickle {directory / PICKLED_CONFIG} (unpickling runs code: "
                              f"only for files you trust), or save its dict as {CONFIG_FILES[0]}")
        import pickle

        with open(directory / PICKLED_CONFIG, "rb") as f:
            config = pickle.load(f)  # noqa: S301 - the user asked for it by name (model.allow_pickle=true)
        return config if isinstance(config, dict) else config.to_dict()
    raise ConfigError("model.path", str(directory), f"a dir holding {' or '.join(CONFIG_FILES)} (or {PICKLED_CONFIG}) and {' or '.join(WEIGHT_FILES)}")


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
