"""Run every experiment preset and record a digest of each CSV it writes (results.csv and the side tables), to show
that a refactor changed no number: run it before (`--out before.json`), then after (`--compare before.json`).

    .venv/bin/python scripts/preset_digests.py --out /tmp/before.json
    .venv/bin/python scripts/preset_digests.py --compare /tmp/before.json   # exit 1 on any difference

Presets run in one process, on the CPU, without figures or progress bars (`PRESET=a,b` to run only some).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def presets() -> list[str]:
    from circuitlab.compose import group_options

    chosen = os.environ.get("PRESET")
    return chosen.split(",") if chosen else group_options("experiment")


def digests(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.glob("*.csv"))}


def run_all(work: Path) -> dict[str, dict[str, str]]:
    import logging

    from circuitlab import compose
    from circuitlab.run import run_experiment

    logging.getLogger("circuitlab").setLevel(logging.WARNING)
    out = {}
    for name in presets():
        start = time.perf_counter()
        cfg = compose.compose_config([f"+experiment={name}", "progress=false", "figures=false", "device=cpu", f"run.dir={work / name}"])
        run_experiment(cfg, work / name)
        out[name] = digests(work / name)
        print(f"{name:<34} {len(out[name])} csv  {time.perf_counter() - start:6.1f} s", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the digests here")
    parser.add_argument("--compare", type=Path, help="compare with digests written before")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = run_all(Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(now, indent=2) + "\n")
    if not args.compare:
        return 0
    before = json.loads(args.compare.read_text())
    changed = 0
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name, {}), now.get(name, {})
        files = sorted(set(old) | set(new))
        differing = [f for f in files if old.get(f) != new.get(f)]
        changed += bool(differing)
        print(f"{'DIFFERENT' if differing else 'identical':<9} {name}: {', '.join(differing) if differing else ', '.join(files)}")
    print(f"{len(set(before) | set(now)) - changed} of {len(set(before) | set(now))} presets byte-identical")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
