"""A model whose circuit is known by construction (hand-set weights, no training), for testing ablations.

Task (`task=repeat_first`): "a c f a" -> yes when the last symbol repeats the first, else no. The residual
stream (32 dims, no LayerNorm, ReLU MLPs) is split into named subspaces, and the circuit is

    head.0.0  attends from every position to position 1 and copies its symbol into FIRST;
    mlp.0     neuron i fires iff the current symbol and FIRST are both symbol i, and writes MATCH;
    head.1.0  attends to its own position and moves MATCH into ANSWER, which the unembedding reads
              (yes - no = 2 * 10 * (ANSWER - 1/2)).

Every other node (heads 0.1-0.3, 1.1-1.3, mlp.1) has random weights that read anything and write only into
JUNK, which nothing in the circuit reads: ablating them changes nothing, exactly. Removing any circuit node
zeroes ANSWER, which is the "no" answer of the corrupted prompts.

At the edge level (`CIRCUIT_EDGES`, also in circuit.json) the circuit depends on the counterfactual: see below.

`python -m circuitlab.models.known_circuit DIR` writes it in the InterpBench layout (ll_model_cfg.json,
model.safetensors) with a word-level tokenizer; the copy in `embedded/known-circuit` was written so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

SYMBOLS = ("a", "b", "c", "d", "e", "f")
CIRCUIT = ("head.0.0", "mlp.0", "head.1.0")
# The same circuit as edges (circuitlab/edges/graph.py naming), per counterfactual of the edge methods. The
# corrupted prompts change only the last symbol: head.0.0 reads position 1 in both prompts, so under patching only
# the path through the last token's symbol differs. Zero ablation also cuts head.0.0's inputs and both circuit
# heads' positional queries and keys. Every other edge changes nothing (junk writes only JUNK).
CIRCUIT_EDGES = {
    "patching": ("input->m0", "m0->a1.h0<v>", "a1.h0->logits"),
    "zero": ("input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->m0", "a0.h0->m0", "m0->a1.h0<v>",
             "input->a1.h0<q>", "input->a1.h0<k>", "a1.h0->logits"),
}
N_CTX = 8
TOK, POS, FIRST, MATCH, ANSWER, JUNK = slice(0, 6), slice(6, 14), slice(14, 20), 20, 21, slice(22, 32)
ATTENTION_SHARPNESS = 40.0
ANSWER_GAIN = 10.0


def vocabulary() -> list[str]:
    """Words after the special tokens (<|endoftext|> = 0, <unk> = 1)."""
    return [*SYMBOLS, "yes", "no"]


def build(seed: int = 0) -> HookedTransformer:
    """The hand-set model (deterministic for a seed: the junk weights are drawn from it)."""
    n_sym, d_vocab = len(SYMBOLS), 2 + len(vocabulary())
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=16, n_ctx=N_CTX, d_vocab=d_vocab, act_fn="relu",
        normalization_type=None, positional_embedding_type="standard", seed=seed, device="cpu",
        model_name="known-circuit",
    )
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(seed)
    junk = lambda *shape: torch.randn(*shape, generator=generator) / shape[-2] ** 0.5  # noqa: E731
    state = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
    symbol_ids = [2 + i for i in range(n_sym)]
    yes, no = 2 + n_sym, 3 + n_sym

    state["embed.W_E"][symbol_ids, TOK] = torch.eye(n_sym)
    state["pos_embed.W_pos"][:, POS] = torch.eye(N_CTX)
    # head 0.0: every query looks for the key at position 1, and copies that symbol into FIRST
    state["blocks.0.attn.W_Q"][0, POS, 0] = ATTENTION_SHARPNESS
    state["blocks.0.attn.W_K"][0, 6 + 1, 0] = 1.0
    state["blocks.0.attn.W_V"][0, TOK, :n_sym] = torch.eye(n_sym)
    state["blocks.0.attn.W_O"][0, :n_sym, FIRST] = torch.eye(n_sym)
    # mlp.0: neuron i = relu(TOK_i + FIRST_i - 1) -> MATCH
    state["blocks.0.mlp.W_in"][TOK, :n_sym] = torch.eye(n_sym)
    state["blocks.0.mlp.W_in"][FIRST, :n_sym] = torch.eye(n_sym)
    state["blocks.0.mlp.b_in"][:n_sym] = -1.0
    state["blocks.0.mlp.W_out"][:n_sym, MATCH] = 1.0
    # head 1.0: each query attends to its own position and moves MATCH into ANSWER
    state["blocks.1.attn.W_Q"][0, POS, :] = ATTENTION_SHARPNESS * torch.eye(N_CTX)
    state["blocks.1.attn.W_K"][0, POS, :] = torch.eye(N_CTX)
    state["blocks.1.attn.W_V"][0, MATCH, 0] = 1.0
    state["blocks.1.attn.W_O"][0, 0, ANSWER] = 1.0
    # unembedding: yes - no = 2 * gain * (ANSWER - 1/2)
    state["unembed.W_U"][ANSWER, yes], state["unembed.W_U"][ANSWER, no] = ANSWER_GAIN, -ANSWER_GAIN
    state["unembed.b_U"][yes], state["unembed.b_U"][no] = -ANSWER_GAIN / 2, ANSWER_GAIN / 2
    # out-of-circuit nodes: read anything, write JUNK only
    n_junk = JUNK.stop - JUNK.start
    for layer in range(2):
        for kind in ("W_Q", "W_K", "W_V"):
            state[f"blocks.{layer}.attn.{kind}"][1:] = junk(3, 32, 8)
        state[f"blocks.{layer}.attn.W_O"][1:, :, JUNK] = junk(3, 8, n_junk)
    state["blocks.1.mlp.W_in"][:, :] = junk(32, 16)
    state["blocks.1.mlp.b_in"][:] = 0.1
    state["blocks.1.mlp.W_out"][:, JUNK] = junk(16, n_junk)
    from circuitlab.models.toy import load_hand_set

    return load_hand_set(model, state)



def save(directory: Path, seed: int = 0) -> None:
    """The InterpBench layout (TransformerLens config as JSON, safetensors weights) plus tokenizer files."""
    from circuitlab.models.toy import save_hand_set

    save_hand_set(build(seed), directory, vocabulary(), N_CTX, circuit_json(seed))

def circuit_json(seed: int = 0) -> str:
    """circuit.json beside the weights: the circuit's nodes and, per counterfactual, its edges."""
    record = {"circuit": list(CIRCUIT), "edges": {k: list(v) for k, v in CIRCUIT_EDGES.items()}, "task": "repeat_first", "seed": seed}
    return json.dumps(record, indent=2) + "\n"


if __name__ == "__main__":
    save(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "embedded" / "known-circuit")
