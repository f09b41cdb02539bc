"""mypy finds no error in `sidecar/` and `adapters/` (options: `[tool.mypy]` in
pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_no_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "sidecar", "adapters"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
