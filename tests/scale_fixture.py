"""Synthetic run dirs at real-model scale for the figure and report tests: what each method writes (results.csv, its
side tables, examples.json) for a model of N_LAYERS layers x N_HEADS heads and a prompt of N_POSITIONS byte-level BPE
tokens (Ġ for a space, Ċ for a newline) whose pairs first differ at FIRST_DIFFERENCE. No model, no torch: figures and
reports read nothing else. Values are seeded noise plus the structure a real sweep has (exactly 0 before the prompts
differ; the residual stream ≈ 1 at the changed token until the information moves to the end)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

N_LAYERS, N_HEADS = 42, 16
TOKENS = ["<|endoftext|>", "When", "ĠMary", "Ġand", "ĠJohn", "Ġwent", "Ġto", "Ġthe", "Ġstore", ",", "Ċ", "ĠJohn", "Ġgave",
          "Ġa", "Ġdrink", "Ġand", "Ġa", "Ġsupercalifragilistic", "Ġcake", "Ġto", "Ġhis", "Ġfriend", "Ġcalled", "Ġnamed"]
N_POSITIONS = len(TOKENS)
FIRST_DIFFERENCE = 11  # the second mention of the subject (S2), as in IOI's abc corruption
ROLES = {"IO": 2, "S1": 4, "S2": 11, "END": N_POSITIONS - 1}
RAW_MARKERS = ("Ġ", "Ċ", "▁")


def row(method: str, stream: str, layer, metric: str, value: float, **extra) -> dict:
    position = extra.pop("position", "all")
    label = extra.pop("position_label", None)
    if label is None:
        label = f"{position}:{TOKENS[int(position)]}" if str(position).isdigit() else str(position)
    return {"experiment": f"scale_{method}", "method": method, "stream": stream, "layer": layer, "head": extra.pop("head", None),
            "heads": extra.pop("heads", ""), "group": extra.pop("group", ""), "position": position, "position_label": label,
            **extra, "metric": metric, "value": value}


def effect(rng: random.Random, layer: int, position: int) -> float:
    """0 before the prompts differ, else seeded noise with the information moving from S2 to END mid-model."""
    if position < FIRST_DIFFERENCE:
        return 0.0
    if position == FIRST_DIFFERENCE:
        return 1.0 if layer < N_LAYERS // 2 else rng.uniform(0, 0.1)
    if position == N_POSITIONS - 1:
        return rng.uniform(0.9, 1.0) if layer >= N_LAYERS // 2 else rng.uniform(0, 0.1)
    return rng.gauss(0, 0.05)


def write(run_dir: Path, rows: list[dict], **tables: pd.DataFrame) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / "results.csv", index=False)
    for name, frame in tables.items():
        frame.to_csv(run_dir / f"{name}.csv", index=False)
    n_pairs = 8
    examples = {"n_pairs": n_pairs, "prompt_names": ["clean", "corrupted"],
                "pairs": [{"clean": TOKENS, "corrupted": [t if i != FIRST_DIFFERENCE else "ĠTom" for i, t in enumerate(TOKENS)],
                           "length": N_POSITIONS, "positions": ROLES, "answers": {"answer": " Mary", "wrong": " John"}}],
                "roles": {role: {str(index): n_pairs} for role, index in ROLES.items()},
                "differ": {str(FIRST_DIFFERENCE): n_pairs}}
    (run_dir / "examples.json").write_text(json.dumps(examples))
    (run_dir / "manifest.json").write_text(json.dumps({"experiment": rows[0]["experiment"], "config": {"method": {"name": rows[0]["method"]}},
                                                       "baselines": {"clean": {"logit_diff": 3.0}, "corrupted": {"logit_diff": -1.0}},
                                                       "templates": {"templates": {"when": "When [N1] and [N2] went to the [PLACE], [S] gave the [OBJECT] to"},
                                                                     "note": "task.templates=when, task.split=test"}}))
    return run_dir


def activation_patching(root: Path) -> Path:
    """Whole streams at every position, each head at every position, leave-one-out groups at one position."""
    rng = random.Random(0)
    rows = []
    for stream in ("resid_pre", "attn_out", "mlp_out"):
        for layer in range(N_LAYERS):
            for position in range(N_POSITIONS):
                value = effect(rng, layer, position) * (1 if stream == "resid_pre" else 0.3)
                rows.append(row("activation_patching", stream, layer, "logit_diff_normalized", value, position=position))
    for layer in range(N_LAYERS):
        for head in range(N_HEADS):
            for position in range(N_POSITIONS):
                value = effect(rng, layer, position) * 0.2
                rows.append(row("activation_patching", "z", layer, "logit_diff_normalized", value, position=position, head=head, heads=str(head)))
            others = ",".join(str(h) for h in range(N_HEADS) if h != head)
            rows.append(row("activation_patching", "z", layer, "logit_diff_normalized", rng.uniform(0.5, 1), position="END",
                            position_label="END", head=head, heads=others, group="leave_one_out"))
    return write(root / "activation_patching", rows)


def attribution_patching(root: Path) -> Path:
    rng = random.Random(1)
    rows = []
    for stream in ("resid_pre", "attn_out", "mlp_out"):
        for layer in range(N_LAYERS):
            for position in range(N_POSITIONS):
                exact = effect(rng, layer, position)
                rows.append(row("attribution_patching", stream, layer, "attribution_normalized", exact + rng.gauss(0, 0.05) * (exact != 0), position=position))
                rows.append(row("attribution_patching", stream, layer, "exact_normalized", exact, position=position))
    return write(root / "attribution_patching", rows)


def path_patching(root: Path) -> Path:
    rng = random.Random(2)
    rows = [row("path_patching", "z", layer, "logit_diff_variation", rng.gauss(0, 0.1), head=head, heads=str(head), receiver=receiver)
            for receiver in ("q.40.0", "q.41.3") for layer in range(N_LAYERS - 2) for head in range(N_HEADS)]
    rows += [row("path_patching", "mlp_out", layer, "logit_diff_variation", rng.gauss(0, 0.1), receiver=receiver)
             for receiver in ("q.40.0", "q.41.3") for layer in range(N_LAYERS - 2)]
    heads = [(40, 0), (41, 3), (12, 7), (30, 15), (35, 2), (20, 9)]
    patterns = pd.DataFrame([{"head": f"{l}.{h}", "layer": l, "head_index": h, "query": q, "key": k, "query_label": f"{q}:{TOKENS[q]}",
                              "key_label": f"{k}:{TOKENS[k]}", "weight": rng.random() / (q + 1) if k <= q else 0.0,
                              "prompts": "clean", "n_prompts": 8}
                             for l, h in heads for q in range(N_POSITIONS) for k in range(N_POSITIONS)])
    return write(root / "path_patching", rows, attention_patterns=patterns)


def das(root: Path) -> Path:
    """IIA over layer x named position, streams at END by layer, leave-one-out head groups, DAS weights per head."""
    rng = random.Random(3)
    rows = [row("das", "block_output", layer, "iia", effect(rng, layer, ROLES[name]) if name in ("S2", "END") else 0.0,
                position=name, position_label=name) for layer in range(N_LAYERS) for name in ROLES]
    rows += [row("das", stream, layer, "iia", rng.random(), position="END", position_label="END")
             for stream in ("attention_output", "mlp_output", "attention_input", "mlp_input", "mlp_activation", "block_input")
             for layer in range(N_LAYERS)]
    weights = pd.DataFrame([{"layer": 1, "head": h, "weight": rng.gauss(0, 1)} for h in range(N_HEADS) for _ in range(64)])
    return write(root / "das", rows, rotation_weights=weights)


def direct_attribution(root: Path) -> Path:
    rng = random.Random(4)
    rows = [row("direct_attribution", stream, layer, "logit_lens", 0.1 * layer + rng.gauss(0, 0.2), position="END", position_label="END")
            for layer in range(N_LAYERS) for stream in ("resid_pre", "resid_mid")]
    rows.append(row("direct_attribution", "resid_post", N_LAYERS - 1, "logit_lens", 4.0, position="END", position_label="END"))
    rows.append(row("direct_attribution", "embed", 0, "dla", 0.1, position="END", position_label="END"))
    rows += [row("direct_attribution", stream, layer, "dla", rng.gauss(0, 0.3), position="END", position_label="END")
             for layer in range(N_LAYERS) for stream in ("attn_out", "mlp_out")]
    rows += [row("direct_attribution", "head", layer, "dla", rng.gauss(0, 0.2), head=head, heads=str(head), position="END", position_label="END")
             for layer in range(N_LAYERS) for head in range(N_HEADS)]
    return write(root / "direct_attribution", rows)


def ablation(root: Path) -> Path:
    rng = random.Random(5)
    rows = [row("ablation", stream, layer, "effect", scale * rng.gauss(0, 0.2), head=head, heads="" if head is None else str(head), scale=scale,
                in_circuit=(layer, head) in {(3, 1), (20, 5)})
            for layer in range(N_LAYERS) for head in [*range(N_HEADS), None] for stream in (["z"] if head is not None else ["mlp_out"])
            for scale in (0.0, 1.0, 5.0)]
    return write(root / "ablation", rows)


def eap(root: Path) -> Path:
    """Edge scores (every head and MLP into the logits and into the heads' q of the last layers) and a circuit that
    touches a few layers of many."""
    rng = random.Random(6)
    senders = ["input", *[f"a{l}.h{h}" for l in range(N_LAYERS) for h in range(N_HEADS)], *[f"m{l}" for l in range(N_LAYERS)]]
    edges = [(s, "logits") for s in senders] + [(s, f"a{N_LAYERS - 1}.h{h}<q>") for s in senders[:200] for h in range(N_HEADS)]
    circuit = {("a40.h3", "logits"), ("m39", "logits"), ("a12.h7", "a41.h3<q>"), ("input", "a12.h7<v>"), ("a41.h3", "logits"),
               ("input", "m0"), ("m0", "a40.h3<k>")}
    edges += [e for e in circuit if e not in edges]
    table = pd.DataFrame([{"sender": s, "receiver": r, "edge": f"{s}->{r}", "score": rng.gauss(0, 1) * (5 if (s, r) in circuit else 1),
                           "in_circuit": (s, r) in circuit} for s, r in edges])
    table["rank"] = table["score"].abs().rank(ascending=False).astype(int)
    curve = pd.DataFrame([{"ranking": "circuit", "percent": None, "edges_requested": 7, "edges_kept": 7, "logit_diff": 2.0, "faithfulness": 0.62},
                          *[{"ranking": ranking, "percent": p, "edges_requested": int(p * 100), "edges_kept": int(p * 100), "logit_diff": p / 30,
                             "faithfulness": min(1.0, p / 20)} for ranking in ("signed", "absolute") for p in (0.1, 1, 10, 100)]])
    rows = [row("eap", "edge", 0, "score", float(s), sender=e.split("->")[0], receiver=e.split("->")[1]) for e, s in zip(table["edge"], table["score"])]
    return write(root / "eap", rows, edges=table, faithfulness=curve)


BUILDERS = {"activation_patching": activation_patching, "attribution_patching": attribution_patching, "path_patching": path_patching,
            "das": das, "direct_attribution": direct_attribution, "ablation": ablation, "eap": eap}
