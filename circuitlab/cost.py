"""What a run will cost, known before its weights load (`circuitlab plan`, `circuitlab run ... --plan`):

- points: the sweep points the run computes (what sharding splits);
- chunks: the batched forwards the engine will run, planned exactly as `engine/sweep.py` plans them (the same
  `plan_chunks` over the same starts, the same points per forward from the memory budget), for the methods whose
  module lists its patching sweeps (`sweep_calls(cfg, plan)`: [(locations, pairs, transformed)]); other methods
  plan their forwards as they run and say so;
- forward-equivalents: the rows those forwards compute (points x prompts x positions from each chunk's start x
  layers from its layer), in units of one plain forward of every prompt through every layer, plus the two cached
  runs (clean and corrupted);
- the activation memory of one full chunk under `memory_budget_mb`, and the weights' memory in the model's dtype
  (TransformerLens' model built on the meta device: every parameter and buffer, no weight read);
- a time estimate, where earlier runs on this machine left a calibration (`timings.jsonl` in circuitlab's cache,
  one line per finished run: its work and its sweep's seconds).

A run records its chunk count in `chunks/plan.json` (for `circuitlab status`) and, when it finished, its timing.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger("circuitlab")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
PLAN_FILE = "plan.json"  # in a run's chunks/: its planned chunk count, for `circuitlab status`
TIMINGS_ENV = "CIRCUITLAB_TIMINGS"  # the calibration file (default: <circuitlab's cache>/timings.jsonl)
TIMINGS_KEPT = 500  # the newest lines read


@dataclass
class Chunk:
    points: int
    start: int  # the first position its forward computes
    layer: int  # the first layer it computes

    def rows(self, n_prompts: int, width: int, n_layers: int) -> int:
        """Rows of one block it computes (a row: one prompt position through one layer)."""
        return self.points * n_prompts * (width - self.start) * (n_layers - self.layer)


@dataclass
class Cost:
    points: int
    points_what: str
    chunks: list[Chunk] | None  # None: the method plans its forwards as it runs
    num_shards: int
    chunk_points: int  # the most points one forward holds
    chunk_mb: float  # activations of one full chunk
    point_mb: float  # activations of one point in a chunk
    locations: int  # the sweep's points, computed or not (before the first difference nothing changes)
    budget_mb: int
    n_params: int
    weights_mb: float
    dtype: str
    n_prompts: int
    width: int
    n_layers: int
    layer_params: float  # parameters of one block (the work of one row)
    device: str
    notes: list[str] = field(default_factory=list)

    def shard_chunks(self, shard: int) -> list[Chunk]:
        """Shard i computes chunks i, i + n, ... of the unsharded plan (`engine/chunks.py`)."""
        return [] if self.chunks is None else self.chunks[shard::self.num_shards]

    def forward_equivalents(self, chunks: list[Chunk]) -> float:
        full = self.n_prompts * self.width * self.n_layers
        return 2 + sum(c.rows(self.n_prompts, self.width, self.n_layers) for c in chunks) / full

    def work(self, chunks: list[Chunk]) -> float:
        """Block-parameter rows of the chunks' forwards (in units of 1e9): what a timing calibration is per."""
        rows = sum(c.rows(self.n_prompts, self.width, self.n_layers) for c in chunks) + 2 * self.n_prompts * self.width * self.n_layers
        return rows * self.layer_params / 1e9


def model_config(model_cfg):
    """TransformerLens' config of the model, read without its weights (as `loading.model_shape` reads it)."""
    from transformer_lens import HookedTransformerConfig

    from circuitlab.models import hf_checkpoint, interpbench, loading

    if model_cfg.source == "pretrained":
        return loading.pretrained_config(model_cfg.name)
    directory = loading.checkpoint_dir(model_cfg)
    if interpbench.is_checkpoint(directory):
        config = interpbench.read_config(directory, bool(getattr(model_cfg, "allow_pickle", False)))
        return config if isinstance(config, HookedTransformerConfig) else HookedTransformerConfig.from_dict(dict(config))
    return hf_checkpoint.tl_config(directory)


def weight_memory(tl_cfg, dtype: str) -> tuple[int, float]:
    """(parameters, MiB of parameters and buffers in `dtype`): TransformerLens' model built on the meta device."""
    import copy

    import torch
    from transformer_lens import HookedTransformer

    tl_cfg = copy.copy(tl_cfg)
    tl_cfg.tokenizer_name, tl_cfg.device = None, "cpu"
    with torch.device("meta"):
        model = HookedTransformer(tl_cfg, move_to_device=False)
    n_params = sum(p.numel() for p in model.parameters())
    size = DTYPE_BYTES.get(str(dtype), 4)
    buffers = sum(b.numel() * (size if b.is_floating_point() else b.element_size()) for b in model.buffers())
    return n_params, round((n_params * size + buffers) / 2**20, 1)


def points_per_forward(tl_cfg, n_prompts: int, width: int, budget_mb: int) -> tuple[int, float]:
    """(points in one forward, MiB of one point's activations): `engine.batching.points_per_chunk`'s estimate."""
    floats = n_prompts * width * (6 * tl_cfg.d_model + 2 * (tl_cfg.d_mlp or 0) + 3 * tl_cfg.n_heads * width) + n_prompts * tl_cfg.d_vocab_out
    return max(1, int(budget_mb * 2**20 // (floats * 4))), floats * 4 / 2**20


def sweep_chunks(tl_cfg, pairs, locations, max_points: int, device: str, transformed: bool = False) -> list[Chunk]:
    """The forwards `engine.sweep.patch_sweep` runs for these points, in its order (per stream and layer, the points
    that patch something, split by `plan_chunks`)."""
    from circuitlab.engine.batching import overhead_rows, plan_chunks
    from circuitlab.engine.sweep import first_difference
    from circuitlab.locations import position_mask

    unchanged_before = 0 if transformed else first_difference(pairs)
    out: list[Chunk] = []
    for (_, layer), group in itertools.groupby(range(len(locations)), key=lambda i: (locations[i].stream, locations[i].layer)):
        group = list(group)
        masks = position_mask([locations[i].positions for i in group], pairs.width, pairs.named_positions, pairs.n_pairs)
        masks[:, :, :unchanged_before] = False
        active = masks[masks.flatten(1).any(1)]
        if not len(active):
            continue
        if tl_cfg.positional_embedding_type == "shortformer":
            starts = [0] * len(active)
        else:
            any_prompt = active.any(1)
            starts = any_prompt.float().argmax(-1).tolist()
        for part, start in plan_chunks(starts, max_points, pairs.n_pairs, pairs.width, overhead_rows(device)):
            out.append(Chunk(len(part), start, layer))
    return out


def estimate(cfg: DictConfig, plan) -> Cost:
    """The cost of the run `cfg` (its Plan from `plan.prepare`: nothing is loaded or computed)."""
    from circuitlab.engine.batching import memory_budget
    from circuitlab.methods import registry
    from circuitlab.models import loading

    hooks = registry.get(cfg.method.name).hooks
    tl_cfg = model_config(cfg.model)
    device = loading.resolve_device(cfg.device)
    budget = memory_budget(device, cfg.get("memory_budget_mb"))
    pairs = plan.pairs
    points, what = hooks.shard_points(cfg, plan.locations, pairs) if hasattr(hooks, "shard_points") else (len(plan.locations), "points")
    max_points, point_mb = points_per_forward(tl_cfg, pairs.n_pairs, pairs.width, budget)
    chunks, notes = None, []
    if hasattr(hooks, "sweep_calls"):
        chunks = []
        for locations, call_pairs, transformed in hooks.sweep_calls(cfg, plan):
            chunks += sweep_chunks(tl_cfg, call_pairs, locations, max_points, device, transformed)
    else:
        notes.append(f"method={cfg.method.name} plans its forwards as it runs: chunks and forward-equivalents are not estimated")
    if str(device).startswith("cuda") and not cfg.get("memory_budget_mb"):
        notes.append(f"memory_budget_mb=null on CUDA is half the free GPU memory when the run starts; this plan assumed {budget} MiB")
    n_params, weights = weight_memory(tl_cfg, cfg.model.get("dtype", "float32"))
    embeddings = 2 * tl_cfg.d_vocab * tl_cfg.d_model
    return Cost(points, what, chunks, int(cfg.sweep.get("num_shards", 1)), max_points, round(max_points * point_mb, 1), point_mb,
                len(plan.locations), budget, n_params, weights,
                str(cfg.model.get("dtype", "float32")), pairs.n_pairs, pairs.width, tl_cfg.n_layers,
                max(1.0, (n_params - embeddings) / tl_cfg.n_layers), str(device), notes)


# --- what a run records --------------------------------------------------------------------------------------------


def record_plan(cfg: DictConfig, plan, run_dir: Path) -> Cost | None:
    """chunks/plan.json: this run's (this shard's) planned chunk count, for `circuitlab status`. Never fails a run."""
    try:
        from circuitlab.storage import write_json

        cost = estimate(cfg, plan)
        if cost.chunks is None:
            return cost
        mine = cost.shard_chunks(int(cfg.sweep.get("shard", 0)))
        (Path(run_dir) / "chunks").mkdir(parents=True, exist_ok=True)
        write_json(Path(run_dir) / "chunks" / PLAN_FILE, {"chunks": len(mine), "points": cost.points, "chunks_unsharded": len(cost.chunks),
                                                          "forward_equivalents": round(cost.forward_equivalents(mine), 2)})
        return cost
    except Exception as err:  # noqa: BLE001  the plan is a courtesy to `circuitlab status`: a run goes on without it
        log.debug("chunks/plan.json not written: %s", err)
        return None


def machine(device: str) -> str:
    """This machine and device, as timings are matched: host, CPU model or GPU name."""
    if str(device).startswith("cuda"):
        import torch

        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        return f"{torch.cuda.get_device_name(index)}"
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()} cpu {model or platform.processor() or platform.machine()}".strip()


def timings_path() -> Path:
    if os.environ.get(TIMINGS_ENV):
        return Path(os.environ[TIMINGS_ENV]).expanduser()
    from circuitlab.models.gguf import cache_root

    return cache_root() / "timings.jsonl"


def record_timing(cfg: DictConfig, manifest: dict, cost: Cost | None) -> None:
    """One line in the calibration file for a run that computed every chunk it planned (a resumed run's seconds are
    not its work's). Never fails a run."""
    try:
        chunks = manifest.get("chunks") or {}
        seconds = (manifest.get("wall_time_seconds") or {}).get("sweep")
        if cost is None or cost.chunks is None or chunks.get("chunks_loaded") or not seconds:
            return
        mine = cost.shard_chunks(int(cfg.sweep.get("shard", 0)))
        if chunks.get("chunks_computed") != len(mine):  # the plan and the run disagree: no calibration from it
            return
        import torch

        entry = {"machine": machine(cost.device), "device": cost.device.split(":")[0], "threads": torch.get_num_threads(),
                 "model": cfg.model.name, "method": cfg.method.name, "dtype": cost.dtype, "work": round(cost.work(mine), 6),
                 "sweep_seconds": seconds, "load_seconds": (manifest.get("wall_time_seconds") or {}).get("load_model"),
                 "date": time.strftime("%Y-%m-%d %H:%M")}
        path = timings_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:  # one short line per write: appends do not interleave
            handle.write(json.dumps(entry) + "\n")
    except Exception as err:  # noqa: BLE001
        log.debug("timing not recorded: %s", err)


def read_timings() -> list[dict]:
    try:
        lines = timings_path().read_text(encoding="utf-8").splitlines()[-TIMINGS_KEPT:]
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("work"), (int, float)) and entry["work"] > 0 and entry.get("sweep_seconds"):
            out.append(entry)
    return out


@dataclass
class Calibration:
    seconds_per_work: float
    load_seconds: float | None
    how: str


def calibration(cost: Cost, model: str, threads: int | None) -> Calibration | None:
    """Seconds per unit of work from earlier runs on this machine and device (the same model's where there are
    some), or None. Threads must match on CPU (a 1-thread run says little about 16)."""
    if threads is None and cost.device == "cpu":
        import torch

        threads = torch.get_num_threads()  # what a run here would use (torch's default, or OMP_NUM_THREADS)
    try:
        here = machine(cost.device) if cost.device == "cpu" or _cuda_here() else None
    except Exception:  # noqa: BLE001
        here = None
    kind = cost.device.split(":")[0]
    records = [t for t in read_timings() if t.get("device") == kind and (here is None or t.get("machine") == here)
               and (kind != "cpu" or threads is None or t.get("threads") == threads)]
    if not records:
        return None
    same_model = [t for t in records if t.get("model") == model]
    used = same_model or records
    rates = [t["sweep_seconds"] / t["work"] for t in used]
    loads = [t["load_seconds"] for t in same_model if isinstance(t.get("load_seconds"), (int, float))]  # another model's load says nothing
    where = here or f"{used[-1].get('machine')} (a run elsewhere: no {kind} here)"
    spread = f", their rates within {min(rates) / statistics.median(rates):.1f}x-{max(rates) / statistics.median(rates):.1f}x of the median" if len(rates) > 1 else ""
    how = (f"calibrated from {len(used)} finished run{'s' * (len(used) != 1)} on {where}, {kind}"
           f"{f', {threads} thread' + ('s' * (threads != 1)) if kind == 'cpu' and threads else ''}: "
           f"{'this model' if same_model else 'other models, scaled by block size'}{spread}; latest {used[-1].get('date')}")
    return Calibration(statistics.median(rates), statistics.median(loads) if loads else None, how)


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


def duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def shards_for(cost: Cost, points_per_job: int | None = None, job_minutes: float | None = None, threads: int | None = None,
               model: str = "") -> tuple[int, str]:
    """`sweep.num_shards=auto`: (jobs, why) packing the points `points_per_job` to a job, or each job's sweep into
    `job_minutes` by the calibration; never more jobs than chunks (a shard holds whole chunks)."""
    from circuitlab.errors import CircuitlabError

    limit = len(cost.chunks) if cost.chunks is not None else cost.points
    if points_per_job is not None:
        wanted, why = math.ceil(cost.points / points_per_job), f"about {points_per_job} points a job"
    else:
        found = calibration(cost, model, threads)
        if found is None:
            raise CircuitlabError(f"sweep.job_minutes={job_minutes}: no timing calibration on this machine yet (no finished run here "
                                  f"recorded one in {timings_path()}); give sweep.points_per_job=N instead")
        seconds = cost.work(cost.chunks or []) * found.seconds_per_work
        wanted, why = math.ceil(seconds / (job_minutes * 60)), f"about {job_minutes:g} min a job ({found.how})"
    jobs = max(1, min(wanted, limit))
    if jobs < wanted:
        why += f"; capped at {limit}, the sweep's {'chunks' if cost.chunks is not None else 'points'}"
    return jobs, why
