"""Training the edge masks: batches of prompts, an epoch a pass over them, the state saved after every epoch.

Each step samples a mask per prompt (masks.py), runs the masked forward (forward.py) and minimises
  faithfulness loss + sqrt(n) (lambda_1 (s - t) + lambda_2 (s - t)^2)
with Adam, the lambdas maximising it (Edge Pruning's Lagrangian; fpt2_ioi.py's optimiser groups with `maximize`).
s is the expected sparsity, t the target reached linearly over the first `sparsity_warmup` of the steps, n the
graph's edges (masks.sparsity_penalty says why sqrt(n): one `lambda_lr` for graphs of any size). The clean
final-position logits and the counterfactual senders' outputs are made once and kept while they fit in CACHE_MB. The
faithfulness loss compares the masked run with the clean one at each prompt's final position: `kl` (Edge
Pruning's KL divergence of the masked distribution from the clean one, over the whole vocabulary) or
`logit_diff` (the squared change of the logit difference, what MIB's curve measures).

Resume: after each epoch the masks, the lambdas, Adam's state, the random generator and the epoch are written
atomically to `<run dir>/chunks/edge_pruning.state` (read back with weights_only=True). A rerun into the dir
(same config and inputs: resume.py refuses any other) continues from the next epoch and ends with the very
numbers of an uninterrupted run; a state whose fingerprint (graph, prompts, method settings) differs is refused.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges.attribution import frozen_weights
from circuitlab.edges.graph import EdgeGraph
from circuitlab.engine.batching import memory_budget
from circuitlab.engine.forward import final_position_logits
from circuitlab.errors import CircuitlabError
from circuitlab.methods.edge_pruning.forward import masked_logits
from circuitlab.methods.edge_pruning.masks import EdgeMasks, sparsity_penalty, target_sparsity
from circuitlab.storage import load_tensors, write_tensors
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")
STATE_FILE = "edge_pruning.state"
KILL_AFTER_ENV = "CIRCUITLAB_KILL_AFTER_EPOCHS"  # testing hook: SIGKILL right after this many epochs are saved
CACHE_MB = 1024  # what the clean logits and counterfactual outputs kept across epochs may take; above it, each step remakes them
SETTINGS = ("sampler", "loss", "lr", "lambda_lr", "target_sparsity", "sparsity_warmup", "seed", "counterfactual")
PENALTY_FORM = "sqrt(n) x lagrangian"  # in the fingerprint: a state trained under another form of the penalty is not resumed


def prompts_per_step(model: HookedTransformer, graph: EdgeGraph, width: int, n: int, memory_budget_mb: int | None) -> int:
    """Prompts per training step within the memory budget: autograd keeps each sender's difference and each block's
    split q / k / v inputs and activations per prompt and position, and each prompt's mask and its gradient."""
    cfg = model.cfg
    per_position = 2 * len(graph.senders) + cfg.n_layers * (6 * graph.n_heads + 40)
    per_prompt = 4 * (width * cfg.d_model * per_position + 4 * graph.real.numel())
    return max(1, min(n, int(memory_budget(cfg.device, memory_budget_mb) * 2**20 // per_prompt)))


def faithfulness_loss(kind: str, masked: torch.Tensor, clean: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """How far the masked final-position logits are from the clean ones (mean over the rows)."""
    if kind == "kl":
        return F.kl_div(F.log_softmax(masked.float(), -1), F.log_softmax(clean.float(), -1), log_target=True, reduction="batchmean")
    rows = torch.arange(masked.shape[0], device=masked.device)
    difference = lambda logits: logits[rows, answer] - logits[rows, wrong]  # noqa: E731
    return ((difference(masked.float()) - difference(clean.float())) ** 2).mean()


class _Fixed:
    """What every epoch needs unchanged, per prompt: the clean run's final-position logits and the counterfactual
    senders' outputs. Made once (in batches of `batch_size`) when they fit in CACHE_MB, else per step."""

    def __init__(self, model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, sources: cf.Sources, batch_size: int):
        self.model, self.pairs, self.graph, self.sources = model, pairs, graph, sources
        cfg, n = model.cfg, pairs.n_pairs
        per_source = pairs.width * len(graph.senders) * cfg.d_model if sources.kind == "patching" else 0
        self.cached = 4 * n * (cfg.d_vocab_out + per_source) <= CACHE_MB * 2**20
        if self.cached:
            batches = [torch.arange(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
            parts = [self._make(rows) for rows in batches]
            self.clean = torch.cat([clean for clean, _ in parts])
            self.source = torch.cat([source for _, source in parts]) if per_source else parts[0][1]

    @torch.no_grad()
    def _make(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model, pairs = self.model, self.pairs
        tokens, final = pairs.clean_tokens[rows].to(model.cfg.device), pairs.final_positions[rows].to(model.cfg.device)
        clean = final_position_logits(model, model(tokens, stop_at_layer=model.cfg.n_layers), final)
        return clean, self.sources.outputs(model, pairs, self.graph, rows)

    def of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean final-position logits and the sources of the prompts `rows`."""
        if not self.cached:
            return self._make(rows)
        index = rows.to(self.clean.device)
        return self.clean[index], self.source[index] if self.sources.kind == "patching" else self.source


def train_masks(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, m, batch_size: int, progress: bool,
                state_dir: Path | None) -> tuple[EdgeMasks, dict]:
    """Trained masks and a record of the training (per epoch: mean loss, expected density, seconds)."""
    device = model.cfg.device
    n = pairs.n_pairs
    steps_per_epoch = -(-n // batch_size)
    warmup = round(float(m.sparsity_warmup) * m.epochs * steps_per_epoch)
    masks = EdgeMasks(graph.real, m.sampler, device)
    lambdas = torch.nn.Parameter(torch.zeros(2, device=device))
    optimizer = torch.optim.Adam([{"params": [masks.logits], "lr": float(m.lr)},
                                  {"params": [lambdas], "lr": float(m.lambda_lr), "maximize": True}])
    generator = torch.Generator().manual_seed(int(m.seed))
    fingerprint = {"senders": len(graph.senders), "receivers": len(graph.receivers), "n_pairs": n, "batch_size": batch_size,
                   "epochs": int(m.epochs), "penalty": PENALTY_FORM, **{k: str(m[k]) for k in SETTINGS}}
    path = None if state_dir is None else Path(state_dir) / STATE_FILE
    history: list[dict] = []
    start = _resume(path, fingerprint, masks, lambdas, optimizer, generator, history)
    fixed = _Fixed(model, pairs, graph, cf.prepare(model, pairs, graph, m.counterfactual, batch_size), batch_size)
    if start:
        log.info("resuming edge pruning at epoch %d of %d (%s)", start + 1, m.epochs, path)
    with frozen_weights(model), torch.enable_grad():  # whatever the caller's grad mode
        for epoch in range(start, m.epochs):
            started, losses = time.perf_counter(), []
            order = torch.randperm(n, generator=generator)
            bar = tqdm(total=steps_per_epoch, desc=f"edge pruning epoch {epoch + 1}/{m.epochs}", unit="step", disable=not progress)
            for i in range(steps_per_epoch):
                rows = order[i * batch_size:(i + 1) * batch_size]
                target = target_sparsity(epoch * steps_per_epoch + i, warmup, float(m.target_sparsity))
                losses.append(_step(model, pairs, graph, m.loss, fixed, masks, lambdas, optimizer, generator, rows, target))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", kept=f"{float(masks.density().detach()):.3f}", target=f"{1 - target:.3f}")
            bar.close()
            history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses), "density": float(masks.density().detach()),
                            "target_density": 1 - target, "seconds": time.perf_counter() - started})
            log.info("edge pruning epoch %d/%d: loss %.4f, expected share of edges kept %.4f (target %.4f), %.1f s", epoch + 1,
                     m.epochs, history[-1]["loss"], history[-1]["density"], 1 - target, history[-1]["seconds"])
            if path is not None:
                _save(path, fingerprint, epoch + 1, masks, lambdas, optimizer, generator, history)
    return masks, {"history": history, "resumed_at_epoch": start, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size}


def _step(model, pairs: PromptPairs, graph: EdgeGraph, loss_kind: str, fixed: _Fixed, masks: EdgeMasks, lambdas, optimizer,
          generator: torch.Generator, rows: torch.Tensor, target: float) -> float:
    device = model.cfg.device
    tokens, final = pairs.clean_tokens[rows].to(device), pairs.final_positions[rows].to(device)
    answer, wrong = pairs.answer_tokens[rows].to(device), pairs.wrong_tokens[rows].to(device)
    clean, source = fixed.of(rows)
    logits = masked_logits(model, graph, tokens, source, masks.sample(len(rows), generator), final)
    faithfulness = faithfulness_loss(loss_kind, logits, clean, answer, wrong)
    loss = faithfulness + sparsity_penalty(masks, lambdas, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(faithfulness.detach())


def _save(path: Path, fingerprint: dict, epoch: int, masks: EdgeMasks, lambdas, optimizer, generator, history: list[dict]) -> None:
    state = {"fingerprint": fingerprint, "epoch": epoch, "logits": masks.logits.detach().cpu(), "lambdas": lambdas.detach().cpu(),
             "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "history": history}
    write_tensors(path, state)
    kill_after = os.environ.get(KILL_AFTER_ENV)
    if kill_after and epoch >= int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)


def _resume(path: Path | None, fingerprint: dict, masks: EdgeMasks, lambdas, optimizer, generator, history: list[dict]) -> int:
    """The number of epochs already trained in `path` (0 when there is none), their state loaded."""
    if path is None or not path.is_file():
        return 0
    try:
        state = load_tensors(path)
    except Exception as err:  # noqa: BLE001  a damaged file is named, removed and the training starts over
        log.warning("damaged edge pruning state %s (%s); training starts over", path, str(err).splitlines()[0][:200])
        path.unlink(missing_ok=True)
        return 0
    if state.get("fingerprint") != fingerprint:
        raise CircuitlabError(f"{path}: edge pruning state of another training ({state.get('fingerprint')}); it is not resumed: "
                              "choose another run.dir, or run.resume=false to start that dir over")
    with torch.no_grad():
        masks.logits.copy_(state["logits"])
        lambdas.copy_(state["lambdas"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    history.extend(state["history"])
    return int(state["epoch"])
