"""Interchange interventions, DAS and Boundless DAS (seed 000), trained on a frozen model.

At a location (stream, layer, positions[, heads]) the base run's vector x takes the source run's s:
- vanilla: x <- s (no training; the same as denoising activation patching, scored by accuracy);
- DAS: x <- x + (s - x) Q Q^T, Q an orthonormal d x k basis (k = `low_rank_dimension`) learned so that the
  intervened model predicts the counterfactual label;
- Boundless DAS: a full rotation R and a learned boundary b in [0, 1]: x <- R^T((1 - m) * R x + m * R s), the mask
  m_i = sigmoid(i / T) * sigmoid((b d - i) / T) sharpening as the temperature T falls, the loss adding
  `boundary_penalty` * b.
For heads, x is the concatenation of the chosen heads' z vectors at a position.

Why it is fast: the model is frozen, so every activation before the intervened layer comes once from a cached
run; training forwards and backwards start at that layer and at the first intervened position (earlier keys and
values from the cache); only the final position is unembedded; and the points of one stream train together, one
parameter set each, in one batch, in groups that fit the memory budget (groups.py).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
import math
import time
import zlib
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal
from transformer_lens import HookedTransformer

from circuitlab.methods.das.config import DASTraining as Training
from circuitlab.errors import ConfigError
from circuitlab.locations import STREAMS, Location, head_mask, position_mask
from circuitlab.engine.batching import memory_budget
from circuitlab.engine.forward import final_position_logits, frozen_prefix, fused_gelu
from circuitlab.engine.sweep import patch_sweep
from circuitlab.methods.das import groups
from circuitlab.methods.das.controls import random_states
from circuitlab.methods.das.mask import Masks
from circuitlab.methods.das.saved import DASResult, interventions_file, load_interventions, location_key  # noqa: F401  (das.* API)
from circuitlab.tasks.base import PromptPairs

INTERVENTIONS = ("vanilla", "das", "boundless")
FEATURIZERS = ("rotation", "mask")
log = logging.getLogger("circuitlab")


def training_from(method_cfg) -> Training:
    """The hyperparameters out of the `method` config group."""
    return Training(**{f.name: method_cfg[f.name] for f in dataclasses.fields(Training)})


def location_width(loc: Location, n_heads: int, d_head: int, d_model: int, d_mlp: int | None = None) -> int | None:
    """The length of the vector an intervention at `loc` rotates (None for mlp_post while d_mlp is unknown)."""
    if STREAMS[loc.stream].has_heads:
        return (len(loc.heads) if loc.heads is not None else n_heads) * d_head
    return d_mlp if loc.stream == "mlp_post" else d_model


def model_dims(model: HookedTransformer) -> tuple[int, int, int, int]:
    """(n_heads, d_head, d_model, d_mlp), the arguments `location_width` takes after `loc`."""
    cfg = model.cfg
    return cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp


def check_locations(locations: list[Location], training: Training, n_heads: int, d_head: int, d_model: int, d_mlp: int | None = None) -> None:
    """Vector streams only, and a DAS subspace no wider than its location; run before the weights load (d_mlp
    unknown: MLP widths are checked again after loading) and after."""
    for loc in locations:
        if loc.stream == "pattern":
            raise ConfigError("sweep.streams", "pattern", "a stream of vectors (pattern holds attention weights)")
        width = location_width(loc, n_heads, d_head, d_model, d_mlp)
        if training.intervention == "das" and training.featurizer == "rotation" and width is not None and training.low_rank_dimension > width:
            raise ConfigError("method.low_rank_dimension", training.low_rank_dimension, f"1..{width} (the width of {loc.stream} at layer {loc.layer})")


class _Interventions(nn.Module):
    """One parameter set per point of a stream's group of points (`basis[point]`, and `boundary[point]`)."""

    def __init__(self, seeds: list[int], width: int, training: Training, states: list[dict] | None = None):
        super().__init__()
        self.kind, self.width, self.temperature = training.intervention, width, training.temperature_start
        k = training.low_rank_dimension if self.kind == "das" else width
        n_points = len(seeds)
        self.basis = nn.Parameter(torch.empty(n_points, width, k))
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]  # each point's start depends on its location only
        for matrix, generator in zip(self.basis.data, generators):
            nn.init.orthogonal_(matrix, generator=generator)
        if self.kind == "boundless":
            self.boundary = nn.Parameter(torch.full((n_points,), 0.5))
        if states is None:
            initial = self.basis.data.clone()
            orthogonal(self, "basis")  # torch's parametrisation, as pyvene's rotations use it
            if k < width:
                self._complete_from(initial, generators)
        else:  # evaluation of saved parameters: plain tensors, already orthonormal
            with torch.no_grad():
                self.basis.copy_(torch.stack([s["basis"] for s in states]))
                if self.kind == "boundless":
                    self.boundary.copy_(torch.stack([s["boundary"] for s in states]))
                    self.temperature = float(states[0]["temperature"])

    @torch.no_grad()
    def _complete_from(self, initial: Float[Tensor, "point width k"], generators: list[torch.Generator]) -> None:
        """Torch's parametrisation of a width x k basis (k < width) trains in the coordinates of a full rotation
        that completes it, drawn from the global random state for the whole batch of points at once, so each point's
        training would depend on the points beside it and on what ran before. Each completion is drawn here from the
        point's own generator instead (torch's construction: the basis beside Gaussian columns, orthonormalised by
        a QR decomposition with a positive diagonal); the basis itself is unchanged (its first k columns)."""
        base = self.parametrizations.basis[0].base
        for i, generator in enumerate(generators):
            columns = torch.randn(base.shape[-1], base.shape[-1] - initial.shape[-1], generator=generator)
            full, tau = torch.geqrf(torch.cat([initial[i], columns], dim=-1))
            rotation = torch.linalg.householder_product(full, tau) * full.diagonal().sgn().unsqueeze(-2)
            base[i] = rotation.to(base)

    def bases(self) -> Tensor:
        """The orthonormal bases. Each read of a parametrised tensor recomputes it (a Householder product and its
        backward), so a forward reads it once for all points."""
        return self.basis

    def masks(self) -> Float[Tensor, "point width"]:
        """Boundless DAS: how much of each rotated dimension comes from the source."""
        position = torch.arange(self.width, device=self.boundary.device, dtype=self.boundary.dtype)
        edge = self.boundary.clamp(1e-3, 1.0)[:, None] * self.width
        return torch.sigmoid(position / self.temperature) * torch.sigmoid((edge - position) / self.temperature)

    def forward(self, points: Tensor, base: Float[Tensor, "point cell width"], source: Float[Tensor, "point cell width"], bases: Tensor) -> Tensor:
        """The intervened vectors of `points` (indices into this module's points), batched over points."""
        basis = bases[points]
        if self.kind == "das":
            return base + ((source - base) @ basis) @ basis.transpose(1, 2)
        mask = self.masks()[points][:, None]
        return ((1 - mask) * (base @ basis) + mask * (source @ basis)) @ basis.transpose(1, 2)

    def states(self) -> list[dict[str, Tensor]]:
        basis = self.bases().detach().cpu()
        if self.kind == "das":
            return [{"basis": b.clone()} for b in basis]
        boundary = self.boundary.detach().clamp(1e-3, 1.0).cpu()
        return [{"basis": b.clone(), "boundary": boundary[i].clone(), "temperature": torch.tensor(self.temperature)} for i, b in enumerate(basis)]


def das_sweep(
    model: HookedTransformer,
    train: PromptPairs,
    test: PromptPairs,
    locations: list[Location],
    training: Training,
    progress: bool = True,
    saved: list[dict[str, Tensor]] | None = None,
    memory_budget_mb: int | None = None,
    fits: list[Fit] = (),
    random_subspace: bool = False,
) -> DASResult:
    """Train (or, with `saved`, load) an intervention per location and measure IIA on `test`; locations train in
    groups that fit `memory_budget_mb` (groups.py). Each of `fits` (other labels for the same pairs) trains beside
    the real fit in the same forwards, from the same start; `random_subspace` scores an untrained random subspace
    of the same size at each location. Their results are in `variants`, by name."""
    dims = model_dims(model)
    check_locations(locations, training, *dims)
    if saved is not None and fits:
        raise ValueError("saved interventions hold the real fit only: fits beside it train")
    if training.featurizer not in FEATURIZERS or (training.featurizer == "mask" and training.intervention != "das"):
        raise ConfigError("method.featurizer", training.featurizer, f"{', '.join(FEATURIZERS)} (mask with method.intervention=das)")
    if training.intervention == "vanilla":
        iia = patch_sweep(model, test, locations, "denoising", memory_budget_mb=memory_budget_mb, progress=progress, metrics=("accuracy",)).metrics["accuracy"]
        return DASResult(locations, iia, torch.full((len(locations),), float("nan")), [{} for _ in locations])
    for p in model.parameters():
        p.requires_grad_(False)
    budget = memory_budget(model.cfg.device, memory_budget_mb) * 2**20
    widths = [location_width(loc, *dims) for loc in locations]
    k = training.low_rank_dimension if training.intervention == "das" and training.featurizer == "rotation" else None
    n_fits = 1 + len(fits)
    plan = groups.plan_groups(locations, widths, groups.first_positions(locations, train), model.cfg, train.width,
                              min(training.batch_size, train.n_pairs), k, budget, copies=n_fits)
    log.info("%s: %s", training.intervention, groups.describe(plan, budget))
    if groups.over_budget(plan, budget):
        log.warning("%s: %s", training.intervention, groups.over_budget(plan, budget))
    iia, loss = torch.empty(len(locations)), torch.full((len(locations),), float("nan"))
    states: list[dict] = [{} for _ in locations]
    variants = {name: DASResult(locations, torch.empty(len(locations)), torch.full((len(locations),), float("nan")), [{} for _ in locations])
                for name in [f.name for f in fits] + (["random_subspace"] if random_subspace else [])}
    with fused_gelu(model):
        started = time.perf_counter()
        log.info("%s: caching the base and source activations of %d train and %d test pairs", training.intervention, train.n_pairs, test.n_pairs)
        train_run, test_run = _CachedRuns(model, train, locations), _CachedRuns(model, test, locations)
        log.info("%s: cached in %.1f s (%d MB)", training.intervention, time.perf_counter() - started, (train_run.nbytes() + test_run.nbytes()) // 2**20)
        steps = 0 if saved is not None else training.epochs * -(-train.n_pairs // training.batch_size)
        bar = groups.LocationBar(len(locations), f"{training.intervention} {'training' if saved is None else 'evaluating'}", progress)
        for number, group in enumerate(plan):
            index = list(group.indices)
            points = [locations[i] for i in index]
            seeds = [training.seed + zlib.crc32(location_key(locations[i]).encode()) for i in index]
            module = _module(seeds * n_fits, group.width, training, None if saved is None else [saved[i] for i in index]).to(model.cfg.device)
            batch = groups.eval_batch(model.cfg, len(index) * n_fits, test.width, group.start, budget)
            bar.start_group(number, len(plan), points, steps + -(-test.n_pairs // batch) * (1 + random_subspace))
            train_labels = _point_labels([train_run.labels] + [f.train_labels for f in fits], len(index), model.cfg.device)
            test_labels = _point_labels([test_run.labels] + [f.test_labels for f in fits], len(index), model.cfg.device)
            if saved is None:
                fit_loss = _train(module, train_run, points * n_fits, training, bar.step, train_labels)
            with torch.no_grad():
                fit_iia = _iia(module, test_run, points * n_fits, batch, bar.step, test_labels)
            fit_states = module.states()
            for f, result in enumerate([None, *(variants[fit.name] for fit in fits)]):
                part = slice(f * len(index), (f + 1) * len(index))
                result = result or DASResult(locations, iia, loss, states)
                result.iia[index] = fit_iia[part]
                if saved is None:
                    result.loss[index] = fit_loss[part]
                for i, state in zip(index, fit_states[part]):
                    result.states[i] = state
            if random_subspace:
                drawn = random_states([states[i] for i in index], [location_key(locations[i]) for i in index], group.width, training)
                with torch.no_grad():
                    control = _module(seeds, group.width, training, drawn).to(model.cfg.device)
                    variants["random_subspace"].iia[index] = _iia(control, test_run, points, batch, bar.step)
                for i, state in zip(index, drawn):
                    variants["random_subspace"].states[i] = state
            bar.end_group()
        bar.close()
    return DASResult(locations, iia, loss, states, variants)


def _module(seeds: list[int], width: int, training: Training, states: list[dict] | None = None) -> nn.Module:
    """The parameters of a group of points: a rotation (`_Interventions`) or, with `featurizer=mask`, masks; saved
    masks are evaluated as the bases they are written as (mask.py)."""
    if training.featurizer == "mask":
        if states is None:
            return Masks(seeds, width, training.temperature_start)
        training = dataclasses.replace(training, featurizer="rotation", low_rank_dimension=width)
    return _Interventions(seeds, width, training, states)


@dataclass(frozen=True)
class Fit:
    """Another labelling of the same train and test pairs, trained beside the real fit (a control, a hypothesis)."""

    name: str
    train_labels: Tensor
    test_labels: Tensor


def _point_labels(labels: list[Tensor], n_locations: int, device) -> Tensor:
    """[point, pair] labels for points laid out fit-major (fit f's locations are points f*n .. f*n+n-1)."""
    return torch.stack([lab.to(device) for lab in labels for _ in range(n_locations)])


def _train(module: _Interventions, run: "_CachedRuns", points: list[Location], training: Training, on_step=lambda: None,
           point_labels: Tensor | None = None) -> Tensor:
    """The seed's loop: Adam, a linear lr decay, cross-entropy of the counterfactual label (plus the boundary
    penalty and temperature schedule of Boundless DAS). Returns each point's mean loss over the last epoch.
    `point_labels` [point, pair]: each point's own labels (default: the pairs' labels for every point)."""
    groups = [{"params": [p for n, p in module.named_parameters() if n not in ("boundary", "logits")], "lr": training.lr}]
    if module.kind in ("boundless", "mask"):
        groups.append({"params": [module.boundary if module.kind == "boundless" else module.logits], "lr": training.boundary_lr})
    module.train(True)
    optimizer = torch.optim.Adam(groups, lr=training.lr)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, training.lr_end_factor, training.lr_decay_steps)
    n_train = run.pairs.n_pairs
    steps = training.epochs * -(-n_train // training.batch_size)
    temperatures = torch.linspace(training.temperature_start, training.temperature_end, steps).tolist()
    generator = torch.Generator().manual_seed(training.seed)
    step, last = 0, torch.zeros(len(points))
    with torch.enable_grad():
        for epoch in range(training.epochs):
            order = torch.randperm(n_train, generator=generator)
            totals = torch.zeros(len(points))
            for batch in order.split(training.batch_size):
                logits = run.intervened_logits(module, points, batch)
                labels = run.labels[batch].repeat(len(points)) if point_labels is None else point_labels[:, batch.to(point_labels.device)].flatten()
                per_point = nn.functional.cross_entropy(logits.flatten(0, 1), labels, reduction="none").view(len(points), -1).mean(1)
                total = per_point.sum()
                if module.kind == "boundless":
                    total = total + training.boundary_penalty * module.boundary.clamp(1e-3, 1.0).sum()
                elif module.kind == "mask":
                    total = total + training.boundary_penalty * module.share().sum()
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                schedule.step()
                module.temperature = temperatures[min(step, steps - 1)]
                totals += per_point.detach().cpu() * len(batch)
                step += 1
                on_step()
            last = totals / n_train
    return last


def _iia(module: _Interventions, run: "_CachedRuns", points: list[Location], batch_size: int = 256, on_batch=lambda: None,
         point_labels: Tensor | None = None) -> Tensor:
    correct = torch.zeros(len(points))
    module.train(False)  # masks: the hard mask
    for batch in torch.arange(run.pairs.n_pairs).split(batch_size):
        logits = run.intervened_logits(module, points, batch)
        labels = run.labels[batch] if point_labels is None else point_labels[:, batch.to(point_labels.device)]
        correct += (logits.argmax(-1) == labels).float().sum(1).cpu()
        on_batch()
    return correct / run.pairs.n_pairs


class _CachedRuns:
    """Base and source activations of one prompt set, cached once for every location."""

    def __init__(self, model: HookedTransformer, pairs: PromptPairs, locations: list[Location]):
        self.model, self.pairs = model, pairs
        device = model.cfg.device
        layers = {loc.layer for loc in locations}
        first = min(layers)
        base_hooks = {f"blocks.{l}.hook_resid_pre" for l in layers}
        base_hooks |= {f"blocks.{l}.attn.hook_{kv}" for l in range(first, model.cfg.n_layers) for kv in "kv"}
        source_hooks = {STREAMS[loc.stream].hook_name(loc.layer) for loc in locations}
        with torch.no_grad():
            _, self.base = model.run_with_cache(pairs.corrupted_tokens.to(device), names_filter=lambda n: n in base_hooks, stop_at_layer=model.cfg.n_layers)
            _, self.source = model.run_with_cache(pairs.clean_tokens.to(device), names_filter=lambda n: n in source_hooks, stop_at_layer=model.cfg.n_layers)
        self.labels = pairs.answer_tokens.to(device)
        self.final_pos = pairs.final_positions.to(device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for cache in (self.base, self.source) for t in cache.values())

    def intervened_logits(self, module: _Interventions, points: list[Location], batch: Tensor) -> Float[Tensor, "point batch vocab"]:
        """Final-position logits of the base prompts `batch` with each point's intervention (points share a
        stream; the forward starts at their first layer and position)."""
        model, device = self.model, self.model.cfg.device
        stream = STREAMS[points[0].stream]
        n, b = len(points), len(batch)
        batch_dev = batch.to(device)
        masks = position_mask([p.positions for p in points], self.pairs.width, self.pairs.named_positions, self.pairs.n_pairs)
        masks = masks[:, batch].to(device)
        heads = head_mask([p.heads for p in points], stream.n_heads(model.cfg)).to(device) if stream.has_heads else None
        start = int(masks.any(0).any(0).float().argmax()) if masks.any() else 0
        masks = masks[:, :, start:]  # the hooked activations hold positions >= start
        first = min(p.layer for p in points)
        bases = module.bases()  # one evaluation of the parametrisation for every hook
        hooks = []
        for layer in sorted({p.layer for p in points}):
            here = torch.tensor([i for i, p in enumerate(points) if p.layer == layer], device=device)
            source = self.source[stream.hook_name(layer)][batch_dev, start:]
            hooks.append((stream.hook_name(layer), partial(_intervene, module=module, bases=bases, here=here, masks=masks, heads=heads, source=source, b=b)))
        resid = self.base[f"blocks.{first}.hook_resid_pre"][batch_dev, start:].repeat(n, 1, 1)
        with model.hooks(fwd_hooks=hooks):
            for index in range(first, model.cfg.n_layers):
                resid = model.blocks[index](resid, past_kv_cache_entry=frozen_prefix(model, self.base, index, start, n, batch_dev))
        logits = final_position_logits(model, resid, (self.final_pos[batch_dev] - start).repeat(n))
        return logits.view(n, b, -1)


def _intervene(activation: Tensor, hook, module: _Interventions, bases: Tensor, here: Tensor, masks: Tensor, heads: Tensor | None, source: Tensor, b: int) -> Tensor:
    """The hook: for each point `here` (rows p*b .. p*b+b-1 of the activation), the masked cells (and heads)
    mixed with the source run's. One batched call when every point takes one cell per prompt."""
    out = activation.clone()
    view = out.view(masks.shape[0], b, *out.shape[1:])
    if heads is None and bool((masks[here].sum(-1) == 1).all()):
        cols = masks[here].float().argmax(-1)  # [point, prompt]
        rows = torch.arange(b, device=out.device).expand_as(cols)
        mixed = module(here, view[here[:, None], rows, cols], source[rows, cols], bases)
        view[here[:, None], rows, cols] = mixed
        return out
    for p in here.tolist():
        rows, cols = masks[p].nonzero(as_tuple=True)
        cells, src = view[p, rows, cols], source[rows, cols]
        point = torch.tensor([p], device=out.device)
        if heads is None:
            view[p, rows, cols] = module(point, cells[None], src[None], bases)[0]
        else:
            chosen = heads[p].nonzero().squeeze(1)
            mixed = module(point, cells[:, chosen].flatten(1)[None], src[:, chosen].flatten(1)[None], bases)[0]
            cells = cells.clone()
            cells[:, chosen] = mixed.view(len(rows), len(chosen), -1)
            view[p, rows, cols] = cells
    return out


def head_weights_frame(locations: list[Location], result: DASResult, n_heads: int, d_head: int) -> "pd.DataFrame":
    """Seed 000's "DAS learned weights map to head importance": for interventions on several heads' concatenated
    value outputs (z), each learned basis entry with the head its row belongs to (Boundless DAS: the rotation's
    columns inside the learned boundary)."""
    import pandas as pd

    rows = []
    for loc, state in zip(locations, result.states):
        if loc.stream != "z" or "basis" not in state or (loc.heads is not None and len(loc.heads) < 2):
            continue
        heads = list(loc.heads) if loc.heads is not None else list(range(n_heads))
        basis = state["basis"]
        if "boundary" in state:
            basis = basis[:, : max(1, math.ceil(float(state["boundary"]) * basis.shape[0]))]
        for i, head in enumerate(heads):
            block = basis[i * d_head : (i + 1) * d_head].flatten().tolist()
            rows += [{"layer": loc.layer, "position": str(loc.positions), "head": head, "weight": w} for w in block]
    return pd.DataFrame(rows, columns=["layer", "position", "head", "weight"])
