"""DAS and interchange interventions: circuitlab against pyvene, side by side in one process.

The same locations (block_output at layers 0-1 x positions IO, S1, S2, END), the same embedded toy-ioi model (pyvene
loads its Hugging Face GPT-2 format), the same IOI counterfactual pairs (the IO-name variable: 200 training pairs,
100 test pairs) and the same batch order; pyvene is driven the way seed 000 drives it, one IntervenableModel per
location trained through the whole network. Prints seconds per location and IIA for both, asserts vanilla IIA
identical and DAS IIA within 0.05, and writes the table to bench/results/das.md. Needs `pip install pyvene`
(`make bench` installs it).

The second table is where DAS speed matters: a GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, GPT-2's
50257-token vocabulary) with random weights, written by `transformers` (GPT2LMHeadModel(GPT2Config(...)),
save_pretrained) and read by both (circuitlab through its local-checkpoint loader, TransformerLens' conversion;
pyvene the HF model itself), prompts from toy-ioi's word-level tokenizer (ids < 108), the position variable, 1-d
DAS at block_output of layers GPT2_LAYERS x (S2, END), few pairs and epochs so that it runs in minutes on 2 cores.

    python bench/das.py            # both tables
    python bench/das.py --gpt2     # the GPT-2-shaped rows only (printed, not written)
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
GPT2_LAYERS, GPT2_POSITIONS = (2, 8), ("S2", "END")
GPT2_ROWS = {"vanilla (position)": Training(intervention="vanilla"),
             "DAS k=1 (position)": Training(intervention="das", low_rank_dimension=1, epochs=2)}
GPT2_PAIRS = {"n_train": 60, "n_prompts": 40}
PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True,
              "refactor_factored_attn_matrices": False}


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


def compare(model, hf_model, train: PromptPairs, test: PromptPairs, locations: list[Location], rows: dict[str, Training]) -> list:
    """Each row: both libraries over the same locations, pairs and batch order; (name, pyvene s / location,
    circuitlab s / location, circuitlab IIA, pyvene IIA, largest gap)."""
    table = []
    for name, training in rows.items():
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
    return table


HEADER = ["intervention", "pyvene (s / location)", "circuitlab (s / location)", "speed-up", "IIA pyvene", "IIA circuitlab", "max IIA gap"]


def table_rows(table: list) -> list[list[str]]:
    return [[name, f"{p:.2f}", f"{c:.3f}", f"{p / c:.1f}x", " ".join(f"{x:.2f}" for x in theirs), " ".join(f"{x:.2f}" for x in ours), f"{gap:.2f}"]
            for name, p, c, ours, theirs, gap in table]


def counterfactual_splits(tokenizer, variable: str, n_train: int, n_prompts: int) -> tuple[PromptPairs, PromptPairs]:
    task = OmegaConf.create({"variable": variable, "n_prompts": n_prompts, "n_train": n_train, "base_patterns": ["ABB", "BAB"],
                             "source_patterns": None, "templates": "all"})
    bos = tokenizer.bos_token_id
    return tuple(ioi_counterfactual.build_split(task, tokenizer, [bos], bos, 0, split) for split in ("train", "test"))


def machine() -> str:
    """torch, threads and the 1-minute load average when the table was made (other processes slow both sides)."""
    import os

    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def toy_table() -> str:
    from transformers import GPT2LMHeadModel

    model_cfg = OmegaConf.create({"source": "embedded", "name": "toy-ioi", "path": None, "dtype": "float32", **PROCESSING})
    model, tokenizer = loading.load_model(model_cfg), loading.load_tokenizer(model_cfg)
    hf_model = GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR / "toy-ioi").eval()
    train, test = counterfactual_splits(tokenizer, "name", 200, 100)
    locations = [Location("resid_post", layer, position, None, "", None) for layer in LAYERS for position in POSITIONS]
    table = compare(model, hf_model, train, test, locations, ROWS)
    where = f"toy-ioi, block_output at layers {LAYERS} x {POSITIONS} (IIA listed in that order), {train.n_pairs} train / {test.n_pairs} test pairs, {machine()}"
    return markdown_table(f"DAS against pyvene ({where})", HEADER, table_rows(table), left_columns=1)


def gpt2_shaped_table() -> str:
    """A random GPT-2-small-shaped checkpoint in a temp dir, loaded by both libraries."""
    import shutil
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf_model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)).eval()
        hf_model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(EMBEDDED_DIR / "toy-ioi" / name, Path(tmp) / name)
        model_cfg = OmegaConf.create({"source": "local", "name": "local", "path": tmp, "dtype": "float32", **PROCESSING})
        model, tokenizer = loading.load_model(model_cfg), loading.load_tokenizer(model_cfg)
    train, test = counterfactual_splits(tokenizer, "position", **GPT2_PAIRS)
    locations = [Location("resid_post", layer, position, None, "", None) for layer in GPT2_LAYERS for position in GPT2_POSITIONS]
    table = compare(model, hf_model, train, test, locations, GPT2_ROWS)
    epochs = GPT2_ROWS["DAS k=1 (position)"].epochs
    where = (f"random GPT-2-small-shaped model: 12 layers, d_model 768, 12 heads, 50257-token vocabulary; block_output at layers "
             f"{GPT2_LAYERS} x {GPT2_POSITIONS} (IIA listed in that order), the position variable, {train.n_pairs} train / "
             f"{test.n_pairs} test pairs, DAS {epochs} epochs of batch 20, {machine()}")
    return markdown_table(f"DAS against pyvene ({where})", HEADER, table_rows(table), left_columns=1)


def main() -> None:
    torch.set_grad_enabled(False)
    if "--gpt2" in sys.argv[1:]:
        print("\n" + gpt2_shaped_table())
        return
    text = toy_table() + "\n" + gpt2_shaped_table()
    print("\n" + text)
    out = Path(__file__).parent / "results" / "das.md"
    write_text(out, text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
