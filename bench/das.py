"""DAS and interchange interventions: circuitlab against pyvene, side by side in one process.

The same locations (block_output at layers 0-1 x positions IO, S1, S2, END), the same embedded toy-ioi model (pyvene
loads its Hugging Face GPT-2 format), the same IOI counterfactual pairs (the IO-name variable: 200 training pairs,
100 test pairs) and the same batch order; pyvene is driven the way seed 000 drives it, one IntervenableModel per
location trained through the whole network. Prints seconds per location and IIA for both, asserts vanilla IIA
identical and DAS IIA within 0.05, and writes the table to bench/results/das.md. Needs `pip install pyvene`
(`make bench` installs it).

    python bench/das.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from patching import markdown_table  # noqa: E402

from circuitlab.locations import Location  # noqa: E402
from circuitlab.methods.das.compute import Training, das_sweep  # noqa: E402
from circuitlab.models import loading  # noqa: E402
from circuitlab.models.loading import EMBEDDED_DIR  # noqa: E402
from circuitlab.results import write_text  # noqa: E402
from circuitlab.tasks import ioi_counterfactual  # noqa: E402
from circuitlab.tasks.base import PromptPairs  # noqa: E402

LAYERS, POSITIONS = (0, 1), ("IO", "S1", "S2", "END")
ROWS = {"vanilla (IO name)": Training(intervention="vanilla"), "DAS k=20 (IO name)": Training(intervention="das", low_rank_dimension=20)}


def pyvene_iia(hf_model, train: PromptPairs, test: PromptPairs, layer: int, position: str, training: Training) -> float:
    """Seed 000's find_variable_at for one location: a fresh IntervenableModel, Adam + LinearLR stepped per
    batch, cross-entropy of the label at each prompt's final position; IIA on the test pairs."""
    import pyvene

    kind = pyvene.VanillaIntervention if training.intervention == "vanilla" else pyvene.LowRankRotatedSpaceIntervention
    config = pyvene.IntervenableConfig(
        model_type=type(hf_model),
        representations=[pyvene.RepresentationConfig(layer, "block_output", "pos", 1, low_rank_dimension=training.low_rank_dimension)],
        intervention_types=kind,
    )
    intervenable = pyvene.IntervenableModel(config, hf_model)
    intervenable.disable_model_gradients()

    def final_logits(pairs: PromptPairs, batch: torch.Tensor) -> torch.Tensor:
        where = [[[int(p)] for p in pairs.named_positions[position][batch]]]
        _, out = intervenable({"input_ids": pairs.corrupted_tokens[batch]}, [{"input_ids": pairs.clean_tokens[batch]}],
                              {"sources->base": (where, where)})
        return out.logits[torch.arange(len(batch)), pairs.final_positions[batch]]

    if training.intervention != "vanilla":
        optimizer = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=training.lr)
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, training.lr_end_factor, training.lr_decay_steps)
        generator = torch.Generator().manual_seed(training.seed)
        with torch.enable_grad():
            for _ in range(training.epochs):
                for batch in torch.randperm(train.n_pairs, generator=generator).split(training.batch_size):
                    loss = torch.nn.functional.cross_entropy(final_logits(train, batch), train.answer_tokens[batch])
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    intervenable.set_zero_grad()
    with torch.no_grad():
        batch = torch.arange(test.n_pairs)
        return (final_logits(test, batch).argmax(-1) == test.answer_tokens).float().mean().item()


def main() -> None:
    from transformers import GPT2LMHeadModel

    torch.set_grad_enabled(False)
    model_cfg = OmegaConf.create({"source": "embedded", "name": "toy-ioi", "path": None, "dtype": "float32", "fold_ln": True,
                                  "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True,
                                  "refactor_factored_attn_matrices": False})
    model, tokenizer = loading.load_model(model_cfg), loading.load_tokenizer(model_cfg)
    hf_model = GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR / "toy-ioi").eval()
    task = OmegaConf.create({"variable": "name", "n_prompts": 100, "n_train": 200, "base_patterns": ["ABB", "BAB"],
                             "source_patterns": None, "templates": "all"})
    bos = tokenizer.bos_token_id
    train, test = (ioi_counterfactual.build_split(task, tokenizer, bos, bos, 0, split) for split in ("train", "test"))
    locations = [Location("resid_post", layer, position, None, "", None) for layer in LAYERS for position in POSITIONS]
    table = []
    for name, training in ROWS.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        ours = das_sweep(model, train, test, locations, training, progress=False).iia.tolist()
        ours_s = (time.perf_counter() - start) / len(locations)
        start = time.perf_counter()
        theirs = []
        for loc in locations:
            torch.manual_seed(0)
            theirs.append(pyvene_iia(hf_model, train, test, loc.layer, loc.positions, training))
        theirs_s = (time.perf_counter() - start) / len(locations)
        gap = max(abs(a - b) for a, b in zip(ours, theirs))
        for loc, a, b in zip(locations, ours, theirs):
            print(f"{name} L{loc.layer} {loc.positions}: circuitlab IIA {a:.2f}, pyvene IIA {b:.2f}")
        assert gap == 0 if training.intervention == "vanilla" else gap <= 0.05, f"{name}: IIA differs by {gap:.2f}"
        table.append((name, theirs_s, ours_s, ours, theirs, gap))
        print(f"{name}: pyvene {theirs_s:.2f} s/location, circuitlab {ours_s:.3f} s/location, {theirs_s / ours_s:.1f}x", flush=True)
    header = ["intervention", "pyvene (s / location)", "circuitlab (s / location)", "speed-up", "IIA pyvene", "IIA circuitlab", "max IIA gap"]
    rows = [[name, f"{p:.2f}", f"{c:.3f}", f"{p / c:.1f}x", " ".join(f"{x:.2f}" for x in theirs), " ".join(f"{x:.2f}" for x in ours), f"{gap:.2f}"]
            for name, p, c, ours, theirs, gap in table]
    where = f"toy-ioi, block_output at layers {LAYERS} x {POSITIONS} (IIA listed in that order), {train.n_pairs} train / {test.n_pairs} test pairs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    text = markdown_table(f"DAS against pyvene ({where})", header, rows, left_columns=1)
    print("\n" + text)
    out = Path(__file__).parent / "results" / "das.md"
    write_text(out, text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
