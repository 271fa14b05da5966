"""Path patching: circuitlab against the plain algorithm (two full forwards per sender, as seed 003 runs it).

GPT-2-small-shaped model with random weights (no download), 8 prompts x 18 tokens (the corrupted prompts differ
at positions 2, 5 and 11). Rows: every head of every layer -> the final residual stream (144 senders), and every
head before the last layer -> the v input of one head of the last layer (132 senders). Asserts equal results
(1e-4), prints a table of seconds and ratios and writes it to bench/results/path_patching.md.

    python bench/path_patching.py
    python bench/path_patching.py --layers 4
    python bench/path_patching.py --device cuda --json out.json  # on a GPU (results files are written for CPU runs only)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # the test oracle: tests/path_patching_reference.py
from patching import finish, markdown_table, model_and_prompts, recorded_setting, setting_line, timed  # noqa: E402
from circuitlab.locations import Location  # noqa: E402
from circuitlab.methods.path_patching.compute import Receiver, path_patch  # noqa: E402
from circuitlab.results import write_text  # noqa: E402
from tests.path_patching_reference import reference_path_patch  # noqa: E402


def head_senders(n_layers: int, n_heads: int) -> list[Location]:
    return [Location("z", layer, "all", (head,), "", head) for layer in range(n_layers) for head in range(n_heads)]


def main() -> None:
    args, model, pairs = model_and_prompts(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    last, n_heads = args.layers - 1, model.cfg.n_heads
    rows = {
        f"every head -> resid_post.{last} (final)": (Receiver("resid_post", last), args.layers),
        f"every head before layer {last} -> v.{last}.3": (Receiver("v", last, 3), last),
    }
    mask = torch.ones(args.prompts, args.tokens, dtype=torch.bool, device=args.device)
    table = []
    for name, (receiver, sender_layers) in rows.items():
        senders = head_senders(sender_layers, n_heads)
        ours, ours_s = timed(lambda: path_patch(model, pairs, senders, [receiver], progress=False).logit_diff, args.device)
        theirs, theirs_s = timed(lambda: reference_path_patch(model, pairs, senders, [receiver], mask), args.device)
        max_diff = (ours - theirs).abs().max().item()
        table.append((name, len(senders), theirs_s, ours_s, max_diff))
        print(f"{name} ({len(senders)} senders): plain {theirs_s:.1f} s, circuitlab {ours_s:.2f} s, {theirs_s / ours_s:.1f}x", flush=True)
    text = render(table, setting_line(args))
    print("\n" + text)
    finish(args, table)
    if recorded_setting(args):
        out = Path(__file__).parent / "results" / "path_patching.md"
        write_text(out, text)
        print(f"written to {out}")


def render(table, setting: str) -> str:
    header = ["senders -> receiver", "senders", "plain two forwards per sender (s)", "circuitlab (s)", "speed-up", "max abs diff"]
    rows = [[name, str(n), f"{plain:.1f}", f"{ours:.2f}", f"{plain / ours:.1f}x", f"{diff:.1e}"] for name, n, plain, ours, diff in table]
    return markdown_table(f"Path patching, GPT-2-small-shaped random model ({setting})", header, rows, left_columns=1)


if __name__ == "__main__":
    main()
