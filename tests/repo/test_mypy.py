"""mypy finds no error in `sidecar/` and `adapters/` (options: `[tool.mypy]` in
pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Files being rewritten on branch s11-storepush, whose errors are fixed there: tolerated
# until that branch is merged (the lead empties this on merge).
TOLERATED = ("sidecar/push.py", "sidecar/store/")


def test_mypy_finds_no_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "sidecar", "adapters"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    others = [line for line in errors if not line.startswith(TOLERATED)]
    assert proc.returncode == 0 or (proc.returncode == 1 and errors and not others), output
