"""Edge pruning's training speed: seconds per epoch on a GPT-2-small-shaped and a 30-layer Llama-shaped (SmolLM2-135M's
config) model with random weights, beside what any gradient method costs at least, in the same process.

Per model: `train_masks` (circuitlab/methods/edge_pruning/train.py) for two epochs over the prompts (the second
timed: the first warms up), batch_size prompts a step; the peer is one plain clean forward (full logits) and
backward of the same batch per step (TransformerLens' own forward, weights differentiable), so the ratio is what
the masked forward (every edge's mask, per-prompt samples, its backward to ~10^5 mask parameters) costs over a
plain training step. Checked first: the differentiable masked forward under a 0 / 1 mask (a random top-5% circuit)
equals circuitlab/edges/masked.py's evaluation of that circuit (1e-4). Prompts: bench/patching.py's (random
tokens; the corrupted prompts differ at positions 2, 5 and 11).

    python bench/edge_pruning.py                         # both models, 8 prompts x 18 tokens, CPU
    python bench/edge_pruning.py --models gpt2 --device cuda
    OMP_NUM_THREADS=1 python bench/edge_pruning.py       # on a shared machine
    python bench/edge_pruning.py --models llama30 --remake  # clean logits and sources remade every step (no cache)

`rows(models, prompts, tokens, batch_size, device)` returns the table's rows (name, points, peer_s, circuitlab_s,
max_abs_diff) for bench/circuit_discovery.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from patching import gpt2_small_shaped, markdown_table, on_device, random_pairs, timed  # noqa: E402

from circuitlab.edges import circuits, masked  # noqa: E402
from circuitlab.edges import counterfactual as cf  # noqa: E402
from circuitlab.edges.graph import EdgeGraph  # noqa: E402
from circuitlab.methods.edge_pruning.forward import masked_logits  # noqa: E402
from circuitlab.methods.edge_pruning import train  # noqa: E402
from circuitlab.methods.edge_pruning.train import train_masks  # noqa: E402
from circuitlab.metrics import logit_diff  # noqa: E402

MODELS = ("gpt2", "llama30")
SETTINGS = dict(sampler="hard_concrete", loss="kl", epochs=2, lr=0.1, lambda_lr=0.05, target_sparsity=0.95, sparsity_warmup=0.8, seed=0,
                counterfactual="patching")


def load(name: str, device: str, tmp: Path):
    """The random model: GPT-2 small's shape (bench/patching.py), or SmolLM2-135M's through circuitlab's model=local
    route (bench/llama_shape.py's checkpoint)."""
    if name == "gpt2":
        return gpt2_small_shaped(12, device)
    from llama_shape import write_checkpoint

    from circuitlab.cli import compose_config
    from circuitlab.models import loading

    write_checkpoint(tmp)
    return loading.load_model(compose_config(["model=local", f"model.path={tmp}"]).model, device)


def agreement(model, pairs, graph: EdgeGraph) -> float:
    """|differentiable masked forward - masked.py| of the mean logit difference under a random top-5% circuit."""
    scores = torch.rand(graph.real.shape, generator=torch.Generator().manual_seed(0)) * graph.real
    keep = circuits.top_n(graph, scores, circuits.edges_for_percent(graph, 5))
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    (theirs,), _ = masked.circuits_logit_diff(model, pairs, graph, sources, keep[None])
    with torch.no_grad():
        mask = keep.float().to(model.cfg.device).expand(pairs.n_pairs, -1, -1)
        logits = masked_logits(model, graph, pairs.clean_tokens, sources.outputs(model, pairs, graph), mask, pairs.final_positions)
        ours = logit_diff(logits, pairs.answer_tokens, pairs.wrong_tokens).mean()
    return abs(float(ours) - float(theirs))


def plain_step(model, pairs, rows) -> None:
    """One clean forward (full logits) and backward of the batch's mean logit difference, weights differentiable
    (circuitlab's loader freezes them: made differentiable here, as bench/circuit_discovery.py's random model is)."""
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.enable_grad():
        logits = model(pairs.clean_tokens[rows])
        index = torch.arange(len(rows), device=logits.device)
        logit_diff(logits[index, pairs.final_positions[rows]], pairs.answer_tokens[rows], pairs.wrong_tokens[rows]).mean().backward()
    model.zero_grad(set_to_none=True)


def model_row(name: str, prompts: int, tokens: int, batch_size: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = load(name, device, Path(tmp))
    pairs = on_device(random_pairs(prompts, tokens, model.cfg.d_vocab), device)
    graph = EdgeGraph.of(model.cfg)
    diff = agreement(model, pairs, graph)
    _, record = train_masks(model, pairs, graph, OmegaConf.create(SETTINGS), batch_size, progress=False, state_dir=None)
    ours = record["history"][-1]["seconds"]
    batches = [torch.arange(i, min(prompts, i + batch_size), device=device) for i in range(0, prompts, batch_size)]
    plain_step(model, pairs, batches[0])  # warm-up
    _, peer = timed(lambda: [plain_step(model, pairs, rows) for rows in batches], device)
    label = "GPT-2 small shape (12 layers)" if name == "gpt2" else "SmolLM2-135M shape (30 layers, GQA)"
    print(f"{label}: {graph.n_edges} edges, epoch {ours:.2f} s ({len(batches)} steps), plain forward + backward {peer:.2f} s, "
          f"{ours / peer:.1f}x, masked forward vs masked.py {diff:.1e}", flush=True)
    return {"name": f"edge pruning epoch, {label}", "points": f"{graph.n_edges} edges, {prompts} prompts", "peer_s": peer,
            "circuitlab_s": ours, "max_abs_diff": diff}


def rows(models=MODELS, prompts: int = 8, tokens: int = 18, batch_size: int = 8, device: str = "cpu") -> list[dict]:
    with frozen_grad():
        return [model_row(name, prompts, tokens, batch_size, device) for name in models]


class frozen_grad:  # noqa: N801  the benchmarks run with gradients off; train_masks turns them on itself
    def __enter__(self):
        self.before = torch.is_grad_enabled()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=18, help="at least 12 (the corrupted positions are 2, 5 and 11)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--remake", action="store_true", help="no cache: each step remakes the clean logits and the sources")
    args = parser.parse_args()
    if args.remake:
        train.CACHE_MB = 0
    table = rows(args.models, args.prompts, args.tokens, args.batch_size, args.device)
    where = args.device if args.device != "cpu" else f"cpu, {torch.get_num_threads()} threads"
    print(markdown_table(f"Edge pruning: seconds per epoch ({args.prompts} prompts x {args.tokens} tokens, batch {args.batch_size}; "
                         f"torch {torch.__version__}, {where})",
                         ["model", "edges, prompts", "plain fwd+bwd per epoch (s)", "edge pruning epoch (s)", "ratio", "max abs diff"],
                         [[r["name"], r["points"], f"{r['peer_s']:.2f}", f"{r['circuitlab_s']:.2f}", f"{r['circuitlab_s'] / r['peer_s']:.1f}x",
                           f"{r['max_abs_diff']:.1e}"] for r in table], left_columns=2))
    worst = max(r["max_abs_diff"] for r in table)
    assert worst < 1e-4, f"the differentiable masked forward differs from masked.py by {worst}"


if __name__ == "__main__":
    main()
