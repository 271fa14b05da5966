"""The one check every bad-input test makes of the CLI: exit code 2 and exactly one line on stderr."""

from __future__ import annotations

import pytest

from circuitlab import cli


def refused(argv: list[str], capsys) -> str:
    """Run the CLI in this process; it must exit 2 with one `circuitlab: error: ...` line on stderr (no traceback),
    which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("circuitlab: error: "), err
    return err
