"""Typed schemas for every config group (compose.register_configs stores them in Hydra's ConfigStore).

The YAML files under `circuitlab/configs/` (shipped in the wheel; the top-level `configs/` links there) stay the
source of truth; each group's YAML extends its schema in its defaults list (`- base_model`), so a typo in a key or
a wrong type fails at composition. Configs are inert: no logic runs when they are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """`source`: embedded (a toy model shipped in the repo), pretrained (a TransformerLens name) or local
    (a Hugging Face checkpoint dir of a supported architecture, see models/hf_checkpoint.py, or an InterpBench-style
    dir: ll_model_cfg.json / .yaml and ll_model.pth or model.safetensors). `source: package` names a real model
    whose weights ship as a pip package (models/packaged.py). `name`: the embedded model, the TransformerLens name or
    the packaged model. `path`: the local checkpoint dir, or a .gguf file. `dtype`: float32, bfloat16 or float16.
    `fold_ln` / `center_writing_weights` / `center_unembed` / `fold_value_biases` / `refactor_factored_attn_matrices`:
    TransformerLens' weight processing options (Hugging Face dirs and pretrained names, with TransformerLens' own
    guards). `allow_pickle`: read an InterpBench `ll_model_cfg.pkl` (unpickling runs code). `bos`: what every prompt starts with: `tokenizer` (its BOS token, else its EOS), `none`, or a
    token of the vocabulary written out (e.g. `<|endoftext|>`)."""

    source: str = "embedded"
    name: str = "toy-ioi"
    path: Optional[str] = None
    dtype: str = "float32"
    bos: str = "tokenizer"
    fold_ln: bool = True
    center_writing_weights: bool = True
    center_unembed: bool = True
    fold_value_biases: bool = True
    refactor_factored_attn_matrices: bool = False
    allow_pickle: bool = False


@dataclass
class TaskConfig:
    """`name`: the task (`task=NAME` sets it). `n_prompts`: how many prompt pairs. `track` (where a task has it):
    tokens whose probability to report with `method.metrics=[...,prob]`."""

    name: str = MISSING
    n_prompts: int = 64


@dataclass
class IOITaskConfig(TaskConfig):
    """IOI prompts; see `circuitlab/tasks/ioi.py`. `templates`: `all`, one name or a list of names."""

    name: str = "ioi"
    split: str = "test"
    patterns: list[str] = field(default_factory=lambda: ["ABB", "BAB"])
    templates: Any = "all"
    corruption: str = "abc"
    fixed_length: Optional[int] = None
    track: list[str] = field(default_factory=list)


@dataclass
class FactualTaskConfig(TaskConfig):
    """Factual recall ("The capital of Spain is"); see `circuitlab/tasks/factual.py`."""

    name: str = "factual"
    n_prompts: int = 32
    countries: Any = "all"
    pairs: Optional[list[list[str]]] = None
    templates: Any = "all"
    track: list[str] = field(default_factory=list)


@dataclass
class PairsTaskConfig(TaskConfig):
    """Prompt pairs read from a JSONL file; see `circuitlab/tasks/pairs.py`."""

    name: str = "pairs"
    path: Optional[str] = None
    track: list[str] = field(default_factory=list)


@dataclass
class AdditionTaskConfig(TaskConfig):
    """Off-by-k addition in context ("2+3=5\\n4+1=5\\n5+2="); see `circuitlab/tasks/addition.py`."""

    name: str = "addition"
    n_demos: int = 4
    offset: int = 1
    nmax: int = 9
    setting: str = "setting1"
    path: Optional[str] = None
    answer_token: str = "whole"
    track: list[str] = field(default_factory=list)


@dataclass
class IOICounterfactualTaskConfig(TaskConfig):
    """IOI base / source pairs for interchange interventions and DAS; see `circuitlab/tasks/ioi_counterfactual.py`.
    `n_prompts`: test pairs; `n_train`: training pairs; `source_patterns`: null = ABB, BAB (position) or CDD, DCD
    (name); `source_names` (position): base (the base's own names, as the seed) or new (two other names)."""

    name: str = "ioi_counterfactual"
    variable: str = "position"
    n_prompts: int = 100
    n_train: int = 200
    base_patterns: list[str] = field(default_factory=lambda: ["ABB", "BAB"])
    source_patterns: Optional[list[str]] = None
    source_names: str = "base"
    templates: Any = "all"
    track: list[str] = field(default_factory=list)


@dataclass
class RepeatFirstTaskConfig(TaskConfig):
    """"a c f a" -> yes / no, the known-circuit model's task; see `circuitlab/tasks/repeat_first.py`."""

    name: str = "repeat_first"
    length: int = 4
    track: list[str] = field(default_factory=list)


@dataclass
class MethodConfig:
    """`name`: the registered method (`method=NAME` sets it)."""

    name: str = MISSING


@dataclass
class SweepConfig:
    """Which locations to patch. `layers`: `all` or a list; `positions`: `every` (each index alone), or a
    list of indices, lists of indices (patched together), named positions (IO, S1, S2, END) and `all` (every
    position at once). `heads` (streams with heads): null (the whole stream; each head for `head_*` names),
    each, all, leave_one_out, cumulative (in `head_order`, or ranked by each head's own effect), a list of
    heads, or a list of lists of heads. `shard` / `num_shards`: compute only every num_shards-th point,
    starting at `shard` (combine the shard dirs with `circuitlab merge`)."""

    streams: list[str] = field(default_factory=lambda: ["resid_pre"])
    layers: Any = "all"
    positions: Any = "every"
    heads: Any = None
    head_order: Optional[list[int]] = None
    shard: int = 0
    num_shards: int = 1


@dataclass
class RunOptions:
    """`dir`: the run directory (name one to rerun into it). `resume`: null = reuse the dir's finished chunks when
    its stored config matches (a different config is refused); true = the same, saying so; false = start over."""

    dir: str = "${results_dir}/${name}/${now:%Y-%m-%d_%H-%M-%S}"
    resume: Optional[bool] = None


@dataclass
class RunConfig:
    """The run-level keys (config.yaml). `seed`: Python's and torch's seed, and the task's prompt sampling.
    `results_dir`: where `name`'s run dirs go. `figures`: draw the figures and report at the end of the run (false:
    `circuitlab figures DIR` draws them later)."""

    name: str = "default"
    seed: int = 0
    device: str = "auto"
    results_dir: str = "results"
    progress: bool = True
    memory_budget_mb: Optional[int] = None
    threads: Optional[int] = None  # torch's intra-op threads (null: torch's default); see circuitlab/threads.py
    figures: bool = True
    run: RunOptions = field(default_factory=RunOptions)
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: MethodConfig = MISSING
    sweep: SweepConfig = MISSING


def plain(value):
    """A config node as plain Python (lists, dicts, scalars); other values as they are."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
