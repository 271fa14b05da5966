"""Run circuitlab's CLI in a fresh Python where `import torch` fails: the figures and reports need no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_without_torch(argv: list[str]) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import builtins, sys
        real = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed here")
            return real(name, *args, **kwargs)
        builtins.__import__ = guarded
        from circuitlab import cli
        cli.main({argv!r})
        assert "torch" not in sys.modules
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
