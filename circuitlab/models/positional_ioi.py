"""An IOI model that solves the task by name *position*, known by construction (hand-set weights, no training).

Seed 000 finds, in GPT-2 small, a "which name slot does the subject take" variable that 1-d DAS localises at the
last token around layers 8-9. This model carries exactly that variable, by construction, at two places, so DAS
and the patching methods have a test where the answer is known.

Task (`task=ioi`, `task=ioi_counterfactual`): the IOI templates ("... [N1] and [N2] ... [S] gave the [OBJECT]
to"), patterns ABB and BAB, 100% on every name pair. The residual stream (80 dims, no LayerNorm, ReLU MLPs) is
split into named subspaces (`SUBSPACES`; indices in the shipped circuit.json):

    NAME (40)     one-hot name identity; at END, the name the name mover copies (read by the unembedding)
    POS (24)      one-hot absolute position (POS[0]: BOS)
    IS_NAME, IS_AND     token flags
    AFTER_AND     the previous token is "and": the name in the second slot
    AND_SEEN      an "and" is at or before this position (N1 is the first-clause name without it)
    DUP           an earlier first-clause name has this token's identity (1 at S2)
    S1_SLOT       the variable, at S2: +EPSILON when the subject's first mention S1 is the second name (ABB),
                  -EPSILON when it is the first (BAB), 0 elsewhere
    S1_SLOT_END   the variable moved on: END (and every position from S2 on)
    JUNK (9)      what the off-circuit nodes write; nothing in the circuit reads it

Head 0 of each layer is the circuit (head 0.1 too):

    head 0.0  previous-token head: copies IS_AND of the token before into AFTER_AND;
    head 0.1  attends to "and" (else BOS) and copies IS_AND into AND_SEEN;
    head 1.0  duplicate-token head: a name after the first clause attends to the first-clause name with its own
              identity (else BOS) and reads that position's slot: at S2 it writes DUP = 1 and
              S1_SLOT = EPSILON * (2 AFTER_AND - IS_NAME) of S1;
    head 2.0  S-position mover: every position attends to the DUP position (S2) and copies S1_SLOT into
              S1_SLOT_END;
    head 3.0  name mover: at END, attends to the first-clause name whose slot is *not* S1's, score
              A (IS_NAME - 2 AND_SEEN + 2 AFTER_AND) - B (S1_SLOT_END / EPSILON) (2 AFTER_AND - IS_NAME),
              and copies its NAME (logit = GAIN * NAME).

Heads 0.0 and 0.1 depend on the template only, so prompts that share a template (the ABC corruption, the
counterfactual pairs) give them the same output and patching never finds them; the three steps the IOI
corruption reaches are `CIRCUIT`. Heads 0.2, 1.1-1.2, 2.1-2.2, 3.1-3.2 and every MLP have random weights that
read anything and write only JUNK.

Where the variable lives (block_output = resid_post; `LOCATIONS`), by construction: S2 after layer 1 (S1_SLOT)
and END after layer 2 (S1_SLOT_END); nowhere else among IO, S1, S2, END. Before layer 1 it is not computed; S2
after layer 2 and END after layer 3 still hold it, but nothing reads it there (a counterfactual pair's base and
source have the same S2 token and the same answer); IO and S1 hold only name identities. The variable is small
(EPSILON) and read with gain 1 / EPSILON, so a 1-d intervention where it is no longer read can move any other
feature by about EPSILON only, too little to change the answer.

`python -m circuitlab.models.positional_ioi DIR` writes it in the InterpBench layout (ll_model_cfg.json,
model.safetensors, word-level tokenizer, circuit.json); the copy in `embedded/positional-ioi` was written so,
and writing it again gives the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitlab.tasks import ioi

N_CTX = 24
D_MODEL, N_HEADS, D_HEAD, D_MLP = 80, 3, 48, 32
N_NAMES = len(ioi.NAMES)
NAME = slice(0, N_NAMES)
POS = slice(N_NAMES, N_NAMES + N_CTX)
BOS = POS.start  # position 0 always holds BOS
IS_NAME, IS_AND, AFTER_AND, AND_SEEN, DUP, S1_SLOT, S1_SLOT_END = range(POS.stop, POS.stop + 7)
JUNK = slice(S1_SLOT_END + 1, D_MODEL)
SUBSPACES = {"NAME": NAME, "POS": POS, "IS_NAME": IS_NAME, "IS_AND": IS_AND, "AFTER_AND": AFTER_AND,
             "AND_SEEN": AND_SEEN, "DUP": DUP, "S1_SLOT": S1_SLOT, "S1_SLOT_END": S1_SLOT_END, "JUNK": JUNK}

# attention scores (before TransformerLens' 1 / sqrt(d_head), which the weights undo)
PREVIOUS, AND_SCORE, SINK = 30.0, 30.0, 15.0
DUP_MATCH, DUP_GATE, DUP_SINK = 40.0, 60.0, 20.0
MOVER = 20.0
# the name mover is soft (score gaps of 2 B = 4) so that DAS's and Boundless DAS's gradients reach its query
NAME_A, SLOT_B = 6.0, 2.0
# the variable is small (+-EPSILON) and read with gain 1 / EPSILON: a 1-d intervention where it is no longer
# read moves any other feature by at most about EPSILON, too little to change the answer
EPSILON = 0.1
GAIN = 20.0

CIRCUIT = ("head.1.0", "head.2.0", "head.3.0")  # the three steps the IOI corruption reaches
TEMPLATE_HEADS = ("head.0.0", "head.0.1")  # the slot features: the same for prompts of one template
# (stream, layer, position) where the S1-slot variable lives, by construction
LOCATIONS = (("resid_post", 1, "S2"), ("resid_post", 2, "END"))


def vocabulary() -> list[str]:
    """Words after the special tokens (<|endoftext|> = 0, <unk> = 1): the IOI task's words."""
    return ioi.vocabulary()


def build(seed: int = 0) -> HookedTransformer:
    """The hand-set model (deterministic for a seed: the junk weights are drawn from it)."""
    words = vocabulary()
    token = {w: 2 + i for i, w in enumerate(words)}
    cfg = HookedTransformerConfig(
        n_layers=4, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=D_MLP, n_ctx=N_CTX, d_vocab=2 + len(words),
        act_fn="relu", normalization_type=None, positional_embedding_type="standard", seed=seed, device="cpu",
        model_name="positional-ioi",
    )
    model = HookedTransformer(cfg)
    scale = cfg.attn_scale  # TransformerLens divides scores by it
    generator = torch.Generator().manual_seed(seed)
    junk = lambda *shape: torch.randn(*shape, generator=generator) / shape[-2] ** 0.5  # noqa: E731
    state = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
    names = [token[n] for n in ioi.NAMES]
    positions, eye = torch.arange(POS.start, POS.stop), torch.eye(N_NAMES)

    state["embed.W_E"][names, NAME] = eye
    state["embed.W_E"][names, IS_NAME] = 1.0
    state["embed.W_E"][token["and"], IS_AND] = 1.0
    state["pos_embed.W_pos"][:, POS] = torch.eye(N_CTX)

    def head(layer: int, h: int) -> dict[str, torch.Tensor]:
        return {k: state[f"blocks.{layer}.attn.{k}"][h] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q")}

    # head 0.0: position p attends to p - 1 (score 30) and copies IS_AND into AFTER_AND
    w = head(0, 0)
    w["W_Q"][positions, torch.arange(N_CTX)] = PREVIOUS * scale
    w["W_K"][positions[:-1], torch.arange(1, N_CTX)] = 1.0
    w["W_V"][IS_AND, 0], w["W_O"][0, AFTER_AND] = 1.0, 1.0
    # head 0.1: attends to "and" (score 30) or else BOS (15); copies IS_AND into AND_SEEN
    w = head(0, 1)
    w["b_Q"][0] = scale
    w["W_K"][IS_AND, 0], w["W_K"][BOS, 0] = AND_SCORE, SINK
    w["W_V"][IS_AND, 0], w["W_O"][0, AND_SEEN] = 1.0, 1.0
    # head 1.0, duplicate-token head: a name after the first clause (AND_SEEN - AFTER_AND = 1) attends to the
    # first-clause name with its own identity, else to BOS. score = 40 <NAME_q, NAME_k>
    #   - 60 (AND_SEEN_k - AFTER_AND_k)                          keys after the first clause (itself) excluded
    #   - 60 (1 - AND_SEEN_q + AFTER_AND_q) IS_NAME_k            queries in the first clause look at no name
    #   + 20 [k = BOS]
    # value: IS_NAME -> DUP, EPSILON (2 AFTER_AND - IS_NAME) -> S1_SLOT
    w = head(1, 0)
    w["W_Q"][NAME, :N_NAMES] = DUP_MATCH * scale * eye
    w["W_K"][NAME, :N_NAMES] = eye
    gate, query_gate, sink = N_NAMES, N_NAMES + 1, N_NAMES + 2
    w["b_Q"][gate] = DUP_GATE * scale
    w["W_K"][AND_SEEN, gate], w["W_K"][AFTER_AND, gate] = -1.0, 1.0
    w["b_Q"][query_gate] = -DUP_GATE * scale
    w["W_Q"][AND_SEEN, query_gate], w["W_Q"][AFTER_AND, query_gate] = DUP_GATE * scale, -DUP_GATE * scale
    w["W_K"][IS_NAME, query_gate] = 1.0
    w["b_Q"][sink] = DUP_SINK * scale
    w["W_K"][BOS, sink] = 1.0
    w["W_V"][IS_NAME, 0], w["W_V"][AFTER_AND, 1] = 1.0, 1.0
    w["W_O"][0, DUP] = 1.0
    w["W_O"][0, S1_SLOT], w["W_O"][1, S1_SLOT] = -EPSILON, 2 * EPSILON
    # head 2.0, S-position mover: every query attends to DUP (score 20) and copies S1_SLOT into S1_SLOT_END
    w = head(2, 0)
    w["b_Q"][0] = MOVER * scale
    w["W_K"][DUP, 0] = 1.0
    w["W_V"][S1_SLOT, 0], w["W_O"][0, S1_SLOT_END] = 1.0, 1.0
    # head 3.0, name mover: score = A (IS_NAME - 2 AND_SEEN + 2 AFTER_AND)     the first clause's two names
    #                              - B (S1_SLOT_END / EPSILON) (2 AFTER_AND - IS_NAME)   the slot S1 is not in
    # value: NAME -> NAME (at END, a non-name token, NAME holds nothing else), read by the unembedding
    w = head(3, 0)
    w["b_Q"][0] = scale
    w["W_K"][IS_NAME, 0], w["W_K"][AND_SEEN, 0], w["W_K"][AFTER_AND, 0] = NAME_A, -2 * NAME_A, 2 * NAME_A
    w["W_Q"][S1_SLOT_END, 1] = -SLOT_B / EPSILON * scale
    w["W_K"][AFTER_AND, 1], w["W_K"][IS_NAME, 1] = 2.0, -1.0
    w["W_V"][NAME, :N_NAMES] = eye
    w["W_O"][:N_NAMES, NAME] = eye
    state["unembed.W_U"][NAME, names] = GAIN * eye

    # out-of-circuit nodes: read anything, write JUNK only
    n_junk = JUNK.stop - JUNK.start
    for layer in range(cfg.n_layers):
        first_junk = 2 if layer == 0 else 1
        for kind in ("W_Q", "W_K", "W_V"):
            state[f"blocks.{layer}.attn.{kind}"][first_junk:] = junk(N_HEADS - first_junk, D_MODEL, D_HEAD)
        state[f"blocks.{layer}.attn.W_O"][first_junk:, :, JUNK] = junk(N_HEADS - first_junk, D_HEAD, n_junk)
        state[f"blocks.{layer}.mlp.W_in"][:, :] = junk(D_MODEL, D_MLP)
        state[f"blocks.{layer}.mlp.b_in"][:] = 0.1
        state[f"blocks.{layer}.mlp.W_out"][:, JUNK] = junk(D_MLP, n_junk)
    from circuitlab.models.toy import load_hand_set

    return load_hand_set(model, state)



def description() -> dict:
    """circuit.json: the circuit's heads, the template heads, the subspaces and where the variable lives."""
    def span(s):
        return [s.start, s.stop] if isinstance(s, slice) else [s, s + 1]

    return {
        "task": "ioi",
        "circuit": list(CIRCUIT),
        "template_heads": list(TEMPLATE_HEADS),
        "variable": f"S1's name slot: +{EPSILON} when the subject's first mention is the second name (ABB), -{EPSILON} when the first (BAB)",
        "variable_locations": [{"stream": s, "layer": layer, "position": p, "subspace": "S1_SLOT" if p == "S2" else "S1_SLOT_END"}
                               for s, layer, p in LOCATIONS],
        "subspaces": {name: span(s) for name, s in SUBSPACES.items()},
        "built_by": "python -m circuitlab.models.positional_ioi DIR",
    }


def save(directory: Path, seed: int = 0) -> None:
    """The InterpBench layout (TransformerLens config as JSON, safetensors weights) plus tokenizer files."""
    from circuitlab.models.toy import save_hand_set

    save_hand_set(build(seed), directory, vocabulary(), N_CTX, json.dumps({**description(), "seed": seed}, indent=2) + "\n")

if __name__ == "__main__":
    save(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "embedded" / "positional-ioi")
