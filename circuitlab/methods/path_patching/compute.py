"""Path patching (the IOI paper's algorithm, used by seed 003 for function induction), batched over senders: the
patched forwards. The receivers and senders are parsed and checked in receivers.py, the results read in important.py.

Base = the corrupted prompts (the addition task's *contrast* prompts), source = the clean (*normal*) ones.
For each sender (one head, a head group, a whole attention layer or an MLP):
  run 1: the base prompt with every head output frozen to the base run except the sender's, which takes its
         source value; MLPs and norms are recomputed; the receivers' inputs are read;
  run 2: the base prompt with only the receivers' inputs replaced by run 1's.
Receivers are the input of a block: the residual stream (`resid_pre.L`, `resid_post.L`; the final one
when L is the last layer) or the query / key / value input of one head (`q.L.H`, `k.L.H`, `v.L.H`).

Why it is fast:
- run 1 computes no attention at all (every head is frozen), so each position evolves alone: only the
  positions the receivers read are computed, only through norms and MLPs, and only from the sender's layer
  on; the senders of every layer share one batch, each joining at its own layer;
- run 2 starts at the first receiver's block, from the first receiver position (earlier keys and values come
  from the base run); a final-residual receiver needs nothing but the unembedding.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from circuitlab.engine import chunks
from circuitlab.locations import STREAMS, Location, head_mask, position_mask
from circuitlab.engine.batching import halving_on_oom, points_per_chunk
from circuitlab.engine.forward import final_position_logits, frozen_prefix, fused_gelu
from circuitlab.engine.sweep import PatchingResult
from circuitlab.metrics import point_metrics
from circuitlab.methods.path_patching.receivers import RESID_RECEIVERS, SENDER_STREAMS, Receiver
from circuitlab.methods.path_patching.receivers import check_senders, parse_receiver  # noqa: F401  (re-exported: tests, bench)
from circuitlab.tasks.base import PromptPairs


@contextmanager
def ungrouped_kv(model: HookedTransformer):
    """Grouped-query attention: give every query head its own key / value copy while path patching, so a
    receiver's k or v belongs to one head."""
    grouped = model.cfg.n_key_value_heads is not None and not model.cfg.ungroup_grouped_query_attention
    if grouped:
        model.cfg.ungroup_grouped_query_attention = True
    try:
        yield
    finally:
        if grouped:
            model.cfg.ungroup_grouped_query_attention = False


def path_patch(
    model: HookedTransformer,
    pairs: PromptPairs,
    senders: list[Location],
    receivers: list[Receiver],
    receiver_positions="all",
    memory_budget_mb: int | None = None,
    progress: bool = True,
    metrics: tuple[str, ...] = ("logit_diff",),
    tracked: dict[str, int] | None = None,
) -> PatchingResult:
    """Each metric per sender (mean over prompts), and the unpatched clean (normal) and corrupted (contrast)
    values. `receiver_positions`: `all`, a named position (END) or position indices, where receivers are
    replaced."""
    metrics = tuple(dict.fromkeys(("logit_diff", *metrics)))
    order = sorted(range(len(senders)), key=lambda i: senders[i].layer)  # run 1 adds senders layer by layer
    with torch.no_grad(), ungrouped_kv(model), fused_gelu(model):
        run = _PathPatching(model, pairs, [senders[i] for i in order], receivers, receiver_positions)
        answer, wrong = pairs.answer_tokens.to(run.device), pairs.wrong_tokens.to(run.device)
        score = lambda logits: point_metrics(logits, answer, wrong, metrics, run.source_final, tracked, pairs.labels_differ)  # noqa: E731
        clean, corrupted = score(run.source_final[None]), score(run.base_final[None])
        results = {name: torch.full((len(senders),), float("nan")) for name in clean}
        chunk = run.senders_per_chunk(memory_budget_mb)
        bar = tqdm(total=len(senders), desc="path patching", unit="sender", disable=not progress)
        call = f"path:{','.join(map(repr, receivers))}:{receiver_positions!r}:{','.join(metrics)}"

        def compute(indices: list[int]) -> dict[str, Tensor]:
            logits = run.second_run(run.first_run(indices), len(indices))
            return score(logits.view(len(indices), pairs.n_pairs, -1))

        for begin in range(0, len(senders), chunk):
            indices = list(range(begin, min(begin + chunk, len(senders))))
            keys = chunks.point_keys(call, [senders[order[i]] for i in indices])
            values_by_metric = chunks.compute_or_load(keys, lambda indices=indices: halving_on_oom(compute, indices))
            for name, values in (values_by_metric or {}).items():  # None: another shard's chunk (stays NaN)
                results[name][[order[i] for i in indices]] = values.cpu()
            bar.update(len(indices))
        bar.close()
    as_floats = lambda d: {k: float(v[0]) for k, v in d.items()}  # noqa: E731
    return PatchingResult(senders, results, as_floats(clean), as_floats(corrupted))


class _PathPatching:
    """The cached base and source runs and the two batched runs over a chunk of senders."""

    def __init__(self, model: HookedTransformer, pairs: PromptPairs, senders: list[Location], receivers: list[Receiver], receiver_positions):
        self.model, self.pairs, self.senders, self.receivers = model, pairs, senders, receivers
        self.device = model.cfg.device
        cfg = model.cfg
        self.n_layers, n_prompts = cfg.n_layers, pairs.n_pairs
        self.final_pos = pairs.final_positions.to(self.device)
        mask = position_mask([receiver_positions], pairs.width, pairs.named_positions, n_prompts)[0].to(self.device)
        self.receiver_mask: Bool[Tensor, "batch pos"] = mask
        self.rows = self._needed_rows(mask)
        self.rows_selected = mask.gather(1, self.rows)
        self.first_block = min(min(s.layer for s in senders), min(r.block for r in receivers))
        self.last_block = max(r.block for r in receivers)
        self.run2_block = min(r.block for r in receivers)
        any_prompt = mask.any(0)
        self.start = 0 if cfg.positional_embedding_type == "shortformer" or not any_prompt.any() else int(any_prompt.float().argmax())
        self.heads = head_mask([s.heads for s in senders], cfg.n_heads).to(self.device)
        self._cache_runs()

    def _needed_rows(self, mask: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch row"]:
        """Positions run 1 must compute, per prompt: the receiver positions, or only the final position when
        every receiver is the final residual stream. Prompts with fewer rows repeat harmless extra ones."""
        prompts = torch.arange(mask.shape[0], device=mask.device)
        needed = torch.zeros_like(mask)
        for receiver in self.receivers:
            if receiver.block == self.n_layers:
                needed[prompts, self.final_pos] |= mask[prompts, self.final_pos]
            else:
                needed |= mask
        n_rows = max(1, int(needed.sum(1).max()))
        return torch.argsort((~needed).int(), dim=1, stable=True)[:, :n_rows]

    def _cache_runs(self) -> None:
        model, pairs = self.model, self.pairs
        layers = range(self.first_block, self.last_block)
        by_stream = {s: {loc.layer for loc in self.senders if loc.stream == s} for s in SENDER_STREAMS}
        base_hooks = {f"blocks.{l}.hook_resid_pre" for l in range(self.first_block, self.n_layers)}
        base_hooks |= {f"blocks.{l}.hook_attn_out" for l in layers}
        base_hooks |= {f"blocks.{l}.attn.hook_z" for l in by_stream["z"]}
        base_hooks |= {f"blocks.{l}.hook_mlp_out" for l in by_stream["mlp_out"]}
        base_hooks |= {f"blocks.{l}.attn.hook_{kv}" for l in range(self.run2_block, self.n_layers) for kv in "kv"}
        source_hooks = {STREAMS[s].hook_name(l) for s, ls in by_stream.items() for l in ls}
        tokens = lambda t: t.to(self.device)  # noqa: E731
        stop = self.n_layers
        base_final, self.base = model.run_with_cache(tokens(pairs.corrupted_tokens), names_filter=lambda n: n in base_hooks, stop_at_layer=stop)
        source_final, self.source = model.run_with_cache(tokens(pairs.clean_tokens), names_filter=lambda n: n in source_hooks, stop_at_layer=stop)
        self.base_final_resid = base_final
        self.base_final = final_position_logits(model, base_final, self.final_pos)
        self.source_final = final_position_logits(model, source_final, self.final_pos)

    def _rows_of(self, activation: Tensor) -> Tensor:
        """The run-1 rows of a cached [batch, pos, ...] activation."""
        prompts = torch.arange(activation.shape[0], device=activation.device)[:, None]
        return activation[prompts, self.rows]

    def _block_input(self, block: int) -> Float[Tensor, "batch row d_model"]:
        if block == self.n_layers:
            return self._rows_of(self.base_final_resid)
        return self._rows_of(self.base[f"blocks.{block}.hook_resid_pre"])

    def senders_per_chunk(self, configured_mb: int | None) -> int:
        """Senders per batch within the memory budget (run 2 dominates: full blocks, as for patching points)."""
        return points_per_chunk(self.model, self.pairs.n_pairs, self.pairs.width, configured_mb)

    # run 1 -----------------------------------------------------------------------------------------

    def first_run(self, indices: list[int]) -> dict[Receiver, Tensor]:
        """Each receiver's input with the senders `indices` patched and every head frozen: [sender*batch, row, ...]."""
        n_prompts = self.pairs.n_pairs
        layer_of = [self.senders[i].layer for i in indices]
        values: dict[Receiver, Tensor] = {}
        resid: Tensor | None = None  # rows of the senders started so far, sender-major
        started = 0
        for block in range(self.first_block, self.last_block + 1):
            for receiver in (r for r in self.receivers if r.block == block):
                waiting = self._block_input(block).repeat(len(indices) - started, 1, 1)
                full = waiting if resid is None else torch.cat([resid, waiting])
                values[receiver] = self._receiver_input(receiver, full)
            if block == self.last_block:
                break
            joining = [k for k in range(started, len(indices)) if layer_of[k] == block]
            if joining:
                new_rows = self._block_input(block).repeat(len(joining), 1, 1)
                resid = new_rows if resid is None else torch.cat([resid, new_rows])
                started += len(joining)
            if resid is not None:
                resid = self._frozen_block(block, resid, [indices[k] for k in range(started)], n_prompts)
        return values

    def _frozen_block(self, layer: int, resid: Tensor, senders: list[int], n_prompts: int) -> Tensor:
        """Block `layer` with its attention output frozen: the base run's, or the sender's patched one."""
        model, block, cfg = self.model, self.model.blocks[layer], self.model.cfg
        attn = self._rows_of(self.base[f"blocks.{layer}.hook_attn_out"]).repeat(len(senders), 1, 1)
        here = [k for k, i in enumerate(senders) if self.senders[i].layer == layer]
        heads_here = [k for k in here if self.senders[senders[k]].stream == "z"]
        if heads_here:
            attn = attn.clone()
            patched = self._patched_attention(layer, self.heads[[senders[k] for k in heads_here]])
            for j, k in enumerate(heads_here):
                attn[k * n_prompts : (k + 1) * n_prompts] = patched[j]
        for k in (k for k in here if self.senders[senders[k]].stream == "attn_out"):
            attn = attn.clone()
            attn[k * n_prompts : (k + 1) * n_prompts] = self._rows_of(self.source[f"blocks.{layer}.hook_attn_out"])
        if cfg.attn_only:
            return resid + attn
        if cfg.parallel_attn_mlp:
            out = resid + attn + _mlp(model, block, resid)
            mid = resid + attn
        else:
            mid = resid + attn
            out = mid + _mlp(model, block, mid)
        for k in (k for k in here if self.senders[senders[k]].stream == "mlp_out"):
            rows = slice(k * n_prompts, (k + 1) * n_prompts)
            out[rows] = mid[rows] + self._rows_of(self.source[f"blocks.{layer}.hook_mlp_out"])
        return out

    def _patched_attention(self, layer: int, heads: Bool[Tensor, "sender head"]) -> Float[Tensor, "sender batch row d_model"]:
        """The attention output of `layer` with the selected heads' z from the source run, the others' from
        the base run (through the post-attention norm where the architecture has one)."""
        attn = self.model.blocks[layer].attn
        base_z = self._rows_of(self.base[f"blocks.{layer}.attn.hook_z"])
        source_z = self._rows_of(self.source[f"blocks.{layer}.attn.hook_z"])
        change = torch.einsum("bphd,hdm,sh->sbpm", source_z - base_z, attn.W_O, heads.to(base_z.dtype))
        if not _normalises_attention_output(self.model):
            return self._rows_of(self.base[f"blocks.{layer}.hook_attn_out"])[None] + change
        raw = torch.einsum("bphd,hdm->bpm", base_z, attn.W_O) + attn.b_O
        return _finish_attention(self.model, self.model.blocks[layer], raw[None] + change)

    def _receiver_input(self, receiver: Receiver, resid: Float[Tensor, "batch row d_model"]) -> Tensor:
        """What the receiver reads from a residual stream: the stream itself, or one head's q / k / v
        (captured at TransformerLens' hook, as run 2 will replace it there)."""
        if receiver.stream in RESID_RECEIVERS:
            return resid
        block = self.model.blocks[receiver.block]
        attn_input = resid if self.model.cfg.original_architecture in POST_NORM_ARCHITECTURES else block.ln1(resid)
        captured = {}

        def capture(activation: Tensor, hook) -> None:
            captured["value"] = activation[:, :, receiver.head].clone()

        with self.model.hooks(fwd_hooks=[(_receiver_hook(receiver), capture)]):
            block.attn.calculate_qkv_matrices(attn_input, attn_input, attn_input)
        return captured["value"]

    # run 2 -----------------------------------------------------------------------------------------

    def second_run(self, values: dict[Receiver, Tensor], n_senders: int) -> Float[Tensor, "sender_batch vocab"]:
        """Final-position logits of the base prompts with only the receivers' inputs replaced."""
        model, start, n_prompts = self.model, self.start, self.pairs.n_pairs
        batch_rows = torch.arange(n_senders * n_prompts, device=self.device)[:, None].expand(-1, self.rows.shape[1])
        selected = self.rows_selected.repeat(n_senders, 1)
        where = (batch_rows[selected], self.rows.repeat(n_senders, 1)[selected] - start)
        final_pos = self.final_pos.repeat(n_senders)

        def replace(activation: Tensor, receiver: Receiver) -> Tensor:
            out = activation.clone()
            if receiver.head is None:
                out[where] = values[receiver][selected]
            else:
                out[where[0], where[1], receiver.head] = values[receiver][selected]
            return out

        if self.run2_block == self.n_layers:
            resid = self.base_final_resid[:, start:].repeat(n_senders, 1, 1)
            for receiver in self.receivers:
                resid = replace(resid, receiver)
            return final_position_logits(model, resid, final_pos - start)
        hooks = [(_receiver_hook(r), lambda act, hook, r=r: replace(act, r)) for r in self.receivers if r.head is not None]
        resid = self.base[f"blocks.{self.run2_block}.hook_resid_pre"][:, start:].repeat(n_senders, 1, 1)
        with model.hooks(fwd_hooks=hooks):
            for index in range(self.run2_block, self.n_layers):
                for receiver in (r for r in self.receivers if r.head is None and r.block == index):
                    resid = replace(resid, receiver)
                resid = model.blocks[index](resid, past_kv_cache_entry=frozen_prefix(model, self.base, index, start, n_senders))
        for receiver in (r for r in self.receivers if r.block == self.n_layers):
            resid = replace(resid, receiver)
        return final_position_logits(model, resid, final_pos - start)


def _receiver_hook(receiver: Receiver) -> str:
    return f"blocks.{receiver.block}.attn.hook_{receiver.stream}"


def _mlp(model: HookedTransformer, block, resid: Tensor) -> Tensor:
    """The MLP's contribution to the residual stream, as TransformerLens' block computes it."""
    if model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return block.apply_mlp(resid)
    return block.apply_mlp(block.ln2(resid))


def _normalises_attention_output(model: HookedTransformer) -> bool:
    cfg = model.cfg
    return bool(cfg.use_normalization_before_and_after) or cfg.original_architecture in POST_NORM_ARCHITECTURES


def _finish_attention(model: HookedTransformer, block, raw: Tensor) -> Tensor:
    """The norms TransformerLens applies to the attention output before it joins the residual stream."""
    if model.cfg.use_normalization_before_and_after:
        raw = block.ln1_post(raw)
    if model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raw = block.ln1(raw)
    return raw
