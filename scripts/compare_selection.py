"""Selection rules side by side on MIB's curve: top-n, greedy, milp, bootstrap and ensembles, per scorer; then
the other scorers (clean-corrupted, EAP-IG over activations, exact edge patching, edge pruning) with top-n.

    .venv/bin/python scripts/compare_selection.py --out /tmp/me/selection        # known circuit + toy-ioi
    .venv/bin/python scripts/compare_selection.py --out DIR --preset ioi_eap --extra model=smollm2-135m task.n_prompts=16

Every row is one `circuitlab run` (in this process, so each model loads once): the scorer, the rule, the run's
circuit (edges kept, faithfulness), the curve's CPR / CMD and the AUROC against a known circuit (manifest.json). milp rows are skipped, saying why,
on a graph above edges/selection.py's MAX_MILP_EDGES. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

from circuitlab import cli
from circuitlab.errors import CircuitlabError

PRESETS = ("known_circuit_eap", "ioi_eap")
ROWS = (  # (scorer overrides, rule label, rule overrides)
    (["method=eap"], "topn", []),
    (["method=eap"], "greedy", ["method.select=greedy"]),
    (["method=eap"], "milp", ["method.select=milp"]),
    (["method=eap"], "bootstrap B x >= 0.5 (topn)", ["method.bootstrap=B"]),
    (["method=eap_ig"], "topn", []),
    (["method=eap_ig"], "greedy", ["method.select=greedy"]),
    (["method=eap_ig"], "milp", ["method.select=milp"]),
    (["method=eap_ig"], "bootstrap B x >= 0.5 (topn)", ["method.bootstrap=B"]),
    (["method=ensemble", "method.combine=mean"], "topn", []),
    (["method=ensemble", "method.combine=min"], "topn", []),
    (["method=ensemble", "method.combine=max"], "topn", []),
    (["method=ensemble", "method.combine=mean"], "milp", ["method.select=milp"]),
    # the other scorers, top-n only (issue 26's table: CPR / CMD / AUROC per method)
    (["method=eap", "method.gradient_at=clean-corrupted"], "topn", []),
    (["method=eap_ig", "method.ig_over=activations"], "topn", []),
    (["method=edge_patching"], "topn", []),
    (["method=edge_pruning"], "topn", []),
    (["method=edge_pruning", "method.sampler=ugs"], "topn", []),
)


def shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="a new directory for the runs")
    parser.add_argument("--preset", nargs="+", default=list(PRESETS), help="experiment presets (edge methods)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run (e.g. task.n_prompts=16)")
    parser.add_argument("--resamples", type=int, default=20, help="B of the bootstrap rows (default 20)")
    args = parser.parse_args(argv)
    print("| preset | scorer | rule | circuit edges | circuit faithfulness | CPR | CMD | AUROC |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.preset:
        for number, (scorer, rule, overrides) in enumerate(ROWS):
            rule = rule.replace("B", str(args.resamples))
            overrides = [o.replace("=B", f"={args.resamples}") for o in overrides]
            run_dir = args.out / preset / f"{number:02d}"
            said = io.StringIO()
            try:
                with contextlib.redirect_stderr(said):
                    cli.main(["run", f"+experiment={preset}", *scorer, *overrides, *args.extra, "figures=false", "progress=false",
                              f"run.dir={run_dir}"])
            except (CircuitlabError, SystemExit) as err:
                why = (said.getvalue().strip().splitlines() or [str(err)])[-1].replace("|", "/")
                print(f"| {preset} | {' '.join(scorer)} | {rule} | refused: {why} | | | | |")
                continue
            manifest = json.loads((run_dir / "manifest.json").read_text())
            circuit = manifest["circuit"]
            print(f"| {preset} | {' '.join(s.removeprefix('method.') for s in scorer)} | {rule} | {circuit['edges_kept']} | "
                  f"{shown(circuit['faithfulness'])} | {shown(manifest['cpr'])} | {shown(manifest['cmd'])} | {shown(manifest.get('auroc'))} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
