"""auto-circuit 1.0.1 as an edge attribution patching (EAP) peer for circuitlab.

Importing this module has no side effects and does not import auto-circuit; the
functions below import it on first call. The EAP path imports only auto-circuit itself
plus attrs (used by auto_circuit/data.py but not declared by it), plotly (types.py),
blobfile and its lxml (sparse_autoencoder.py, imported by graph_utils.py), so beside
circuitlab's own environment ``pip install --no-deps auto-circuit==1.0.1 attrs plotly
blobfile lxml`` is enough (no installed package changes). auto-circuit 1.0.1 was written
for TransformerLens 1.x/2.x: see ``_tl_kv_cache_alias`` for the one shim TL 3.9 needs.

Conventions (read from auto_circuit/prune_algos/mask_gradient.py and
utils/patch_wrapper.py, and checked against a hand-written reference):

* auto-circuit interpolates every edge with a mask m (one scalar per edge, shared by all
  prompts and all positions when ``seq_len=None``): receiver_input += sum_s m[r, s] *
  (patch_out_s - clean_out_s). With ``mask_val=0`` and ``grad_function="logit"``,
  ``answer_function="avg_diff"`` it backpropagates ``loss = -mean_b(logit[ans] -
  logit[wrong])`` at the final position (``slice_output="last_seq"``) and returns
  d loss / d m, i.e. grad_receiver_input . (corrupt_sender_out - clean_sender_out),
  summed over positions and (through the batch mean in the loss) averaged over prompts,
  with the sign flipped: raw auto-circuit score = -(our EAP score). Gradients of several
  batches accumulate (a sum of per-batch means); we pass one batch holding every prompt.
* ``autocircuit_eap`` returns the negated raw score, so it is in circuitlab's convention
  (the first-order estimate of metric(corrupted patch) - metric(clean)).
* Node mapping: "Resid Start" (blocks.0.hook_resid_pre, token + positional embedding
  together) -> ``input``; "A{l}.{h}" (attn.hook_result) -> ``a{l}.h{h}``; "MLP {l}"
  (hook_mlp_out) -> ``m{l}``; receivers "A{l}.{h}.Q/K/V" (hook_q/k/v_input) ->
  ``a{l}.h{h}<q>/<k>/<v>``, "MLP {l}" (hook_mlp_in) -> ``m{l}``, "Resid End"
  (blocks.{L-1}.hook_resid_post) -> ``logits``. The edge set is the EAP-IG graph's:
  every sender before every receiver (an MLP reads its own layer's heads).
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from typing import Any

_AC: dict[str, Any] = {}


@contextlib.contextmanager
def _tl_kv_cache_alias():
    """auto-circuit 1.0.1 imports ``transformer_lens.past_key_value_caching`` and
    ``transformer_lens.HookedTransformerKeyValueCache``, both gone in TransformerLens 3.x
    (the class is now ``TransformerLensKeyValueCache``). It only uses them as type hints
    on the EAP path, so alias them while auto-circuit is imported, then remove the aliases."""
    import transformer_lens as tl
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    mod_name = "transformer_lens.past_key_value_caching"
    added_mod = mod_name not in sys.modules
    added_attr = not hasattr(tl, "HookedTransformerKeyValueCache")
    if added_mod:
        shim = types.ModuleType(mod_name)
        shim.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
        sys.modules[mod_name] = shim
    if added_attr:
        tl.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
    try:
        yield
    finally:
        if added_mod:
            sys.modules.pop(mod_name, None)
        if added_attr:
            delattr(tl, "HookedTransformerKeyValueCache")


def import_auto_circuit() -> dict[str, Any]:
    """Import the parts of auto-circuit the EAP path needs (once per process)."""
    if not _AC:
        with _tl_kv_cache_alias():
            from auto_circuit.data import PromptDataLoader, PromptDataset
            from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
            from auto_circuit.utils.graph_utils import patchable_model
            from auto_circuit.utils.misc import set_module_by_name
        _AC.update(
            PromptDataLoader=PromptDataLoader,
            PromptDataset=PromptDataset,
            mask_gradient_prune_scores=mask_gradient_prune_scores,
            patchable_model=patchable_model,
            set_module_by_name=set_module_by_name,
        )
    return _AC


def _node_name(ac_name: str) -> str:
    """auto-circuit's node name -> the EAP-IG Graph's."""
    if ac_name == "Resid Start":
        return "input"
    if ac_name == "Resid End":
        return "logits"
    if ac_name.startswith("MLP "):
        return f"m{int(ac_name[4:])}"
    assert ac_name.startswith("A"), ac_name
    parts = ac_name[1:].split(".")
    name = f"a{int(parts[0])}.h{int(parts[1])}"
    if len(parts) == 3:
        name += f"<{parts[2].lower()}>"
    return name


@contextlib.contextmanager
def _factorized_tl_flags(model):
    """The hook flags auto-circuit's factorized TL graph asserts; restored afterwards."""
    cfg = model.cfg
    old = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        model.set_use_attn_result(old[0])
        model.set_use_split_qkv_input(old[1])
        model.set_use_hook_mlp_in(old[2])


@contextlib.contextmanager
def _frozen_params(model):
    """Weights need no gradient for the mask gradient; restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def autocircuit_eap_raw(model, clean_tokens, corrupted_tokens, answer_ids, wrong_ids, freeze_params=True):
    """auto-circuit's own ``mask_gradient_prune_scores(mask_val=0)`` output, keyed by
    EAP-IG edge names, unchanged in sign (= -our score). The model is wrapped in place
    for the call and unwrapped (and its cfg hook flags restored) before returning.
    ``freeze_params``: turn off the weights' requires_grad for the call, so backward
    computes only the mask gradients (the scores are the same either way; auto-circuit's
    own ``train_mask_mode`` calls ``model.zero_grad()``, so weight .grad is cleared)."""
    import torch as t

    ac = import_auto_circuit()
    clean = clean_tokens.to(model.cfg.device)
    corrupt = corrupted_tokens.to(model.cfg.device)
    assert clean.shape == corrupt.shape and clean.ndim == 2
    n = clean.shape[0]
    answers = [answer_ids.reshape(n, -1)[i].to(clean.device) for i in range(n)]
    wrongs = [wrong_ids.reshape(n, -1)[i].to(clean.device) for i in range(n)]
    dataset = ac["PromptDataset"](clean, corrupt, answers, wrongs)
    loader = ac["PromptDataLoader"](dataset, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)

    with _factorized_tl_flags(model), (_frozen_params(model) if freeze_params else contextlib.nullcontext()):
        pm = ac["patchable_model"](
            model, factorized=True, slice_output="last_seq", seq_len=None,
            separate_qkv=True, device=clean.device,
        )
        try:
            with t.enable_grad():
                scores = ac["mask_gradient_prune_scores"](
                    pm, loader, official_edges=None, grad_function="logit",
                    answer_function="avg_diff", mask_val=0.0,
                )
            lists = {module: score.tolist() for module, score in scores.items()}
            names = {node.name: _node_name(node.name) for node in pm.nodes}
            out = {}
            for edge in pm.edges:
                value = lists[edge.dest.module_name]
                for i in edge.patch_idx:
                    value = value[i]
                out[f"{names[edge.src.name]}->{names[edge.dest.name]}"] = value
        finally:
            for w in pm.wrappers:  # undo the in-place wrapping
                ac["set_module_by_name"](model, w.module_name, w.module)
            model.zero_grad(set_to_none=True)
    return out


def autocircuit_eap(model, clean_tokens, corrupted_tokens, answer_ids, wrong_ids, freeze_params=True) -> dict[str, float]:
    """EAP score of every edge of auto-circuit's graph, in circuitlab's convention:
    mean over prompts, sum over positions, of grad_receiver_input . (corrupted_sender_out
    - clean_sender_out), metric = mean (logit[answer] - logit[wrong]) at the final
    position; clean prompts run, corrupted prompts are the patch source. Keys are EAP-IG
    edge names (``input->a0.h0<q>``, ``a0.h1->m1``, ``m11->logits``).

    ``answer_ids`` / ``wrong_ids``: shape [n_prompts] (or [n_prompts, k]: auto-circuit
    then averages the k answer logits)."""
    raw = autocircuit_eap_raw(model, clean_tokens, corrupted_tokens, answer_ids, wrong_ids, freeze_params)
    return {k: -v for k, v in raw.items()}


def time_autocircuit_eap(model, clean_tokens, corrupted_tokens, answer_ids, wrong_ids, freeze_params=True) -> tuple[float, dict[str, float]]:
    """Seconds for one ``autocircuit_eap`` call (auto-circuit imported beforehand, so the
    import is not timed), and its scores."""
    import torch as t

    import_auto_circuit()
    if t.cuda.is_available():
        t.cuda.synchronize()
    start = time.perf_counter()
    scores = autocircuit_eap(model, clean_tokens, corrupted_tokens, answer_ids, wrong_ids, freeze_params)
    if t.cuda.is_available():
        t.cuda.synchronize()
    return time.perf_counter() - start, scores
