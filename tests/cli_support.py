"""The installed `allocation-ledger` command, run as a user runs it: a
subprocess in a directory of its own, with no ALLOCATION_LEDGER_ setting
but those a test gives."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMMAND = Path(sys.executable).parent / "allocation-ledger"
HOME = Path(tempfile.mkdtemp(prefix="allocation-ledger-home-"))
"""The runs' home directory (where a library keeps its caches), apart from
the directories the tests look into."""


def cli_env(**settings: str) -> dict[str, str]:
    """The environment of a run: PATH, HOME, wide tables, a quiet log, and
    `settings` (names without the ALLOCATION_LEDGER_ prefix)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(HOME),
        "COLUMNS": "200",
        "ALLOCATION_LEDGER_LOG_LEVEL": "WARNING",
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update({f"ALLOCATION_LEDGER_{k}": v for k, v in settings.items()})
    return env


def run_cli(
    *arguments: str,
    cwd: Path,
    timeout: float = 120,
    stdin: str | None = "",
    env: dict[str, str] | None = None,
    **settings: str,
) -> subprocess.CompletedProcess[str]:
    """Run the installed command with `arguments` in `cwd`; `settings` (and
    `env`) as for cli_env. Standard input is empty (closed at once) unless
    given."""
    assert COMMAND.exists(), f"{COMMAND} is not installed: pip install -e '.[dev]'"
    return subprocess.run(
        [str(COMMAND), *arguments],
        cwd=cwd,
        env=cli_env(**(env or {}), **settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(completed: subprocess.CompletedProcess[str], code: int) -> str:
    """The single line a failed run wrote on stderr (checked: exit `code`,
    nothing on stdout, one line, no traceback)."""
    shown = f"exit {completed.returncode}\nstdout: {completed.stdout}\n"
    shown += f"stderr: {completed.stderr}"
    assert completed.returncode == code, shown
    assert completed.stdout == "", shown
    assert "Traceback" not in completed.stderr, shown
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("allocation-ledger: "), shown
    return lines[0]
