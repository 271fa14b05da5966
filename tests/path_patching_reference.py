"""The plain path-patching algorithm, written here as the oracle the tests (and bench/path_patching.py, as its peer)
compare circuitlab's batched path patching with: two full forwards per sender, TransformerLens hooks only."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from circuitlab.locations import Location
from circuitlab.methods.path_patching.compute import Receiver, ungrouped_kv
from circuitlab.metrics import logit_diff
from circuitlab.tasks.base import PromptPairs


def reference_path_patch(
    model: HookedTransformer, pairs: PromptPairs, senders: list[Location], receivers: list[Receiver], receiver_mask: torch.Tensor
) -> torch.Tensor:
    """The seed's algorithm, one sender at a time: run 1 on the base (corrupted) prompts with every head's z
    frozen to the base run except the sender's (from the source run) and the receivers' inputs cached; run 2
    on the base prompts with only those inputs patched (where `receiver_mask[batch, pos]`). Mean logit diff
    per sender."""
    base, source = pairs.corrupted_tokens, pairs.clean_tokens
    prompts = torch.arange(pairs.n_pairs, device=base.device)
    with torch.no_grad(), ungrouped_kv(model):
        _, base_cache = model.run_with_cache(base)
        _, source_cache = model.run_with_cache(source)
        names = {r: _hook_name(r, model.cfg.n_layers) for r in receivers}
        out = []
        for sender in senders:
            def freeze(act, hook, sender=sender):
                act = base_cache[hook.name].clone()
                if sender.stream == "z" and hook.layer() == sender.layer:
                    act[:, :, list(sender.heads)] = source_cache[hook.name][:, :, list(sender.heads)]
                return act

            run_1 = [(f"blocks.{layer}.attn.hook_z", freeze) for layer in range(model.cfg.n_layers)]
            if sender.stream in ("mlp_out", "attn_out"):
                name = f"blocks.{sender.layer}.hook_{sender.stream}"
                run_1.append((name, lambda act, hook: source_cache[hook.name]))
            with model.hooks(fwd_hooks=run_1):
                _, patched = model.run_with_cache(base, names_filter=lambda n: n in names.values())

            def replace(act, hook, receiver):
                act, cached = act.clone(), patched[hook.name]
                if receiver.head is None:
                    act[receiver_mask] = cached[receiver_mask]
                else:
                    head_view = act[:, :, receiver.head]  # a view: writing it writes act
                    head_view[receiver_mask] = cached[:, :, receiver.head][receiver_mask]
                return act

            run_2 = [(names[r], lambda act, hook, r=r: replace(act, hook, r)) for r in receivers]
            logits = model.run_with_hooks(base, fwd_hooks=run_2)[prompts, pairs.final_positions]
            out.append(logit_diff(logits, pairs.answer_tokens, pairs.wrong_tokens).mean())
    return torch.stack(out)


def _hook_name(receiver: Receiver, n_layers: int) -> str:
    if receiver.head is not None:
        return f"blocks.{receiver.layer}.attn.hook_{receiver.stream}"
    return f"blocks.{receiver.layer}.hook_{receiver.stream}"
