"""scripts/demo-history.py writes the same ledger every run, so the examples
in docs/operations.md made from it can be run again as shown (its
allocation ids were random, and `history alloc-…` of the docs was not found)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_the_operations_examples_run_again_on_a_new_demo_history(
    tmp_path: Path,
) -> None:
    database = tmp_path / "history.db"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo-history.py"), str(database)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    docs = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    shown = re.search(
        r"\$ allocation-ledger history (alloc-[0-9a-f]{12})\n +History of", docs
    )
    assert shown is not None
    history = run_cli("history", shown.group(1), cwd=tmp_path, DATABASE=str(database))
    assert history.returncode == 0, history.stderr
    assert "(job review-26, pool default)" in history.stdout
    example = re.search(
        r"\$ allocation-ledger export --since 100 \| head -1\n(.*)\n", docs
    )
    assert example is not None
    export = run_cli("export", "--since", "100", cwd=tmp_path, DATABASE=str(database))
    assert export.returncode == 0, export.stderr
    assert export.stdout.splitlines()[0] == example.group(1)
