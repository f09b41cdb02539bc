"""The import direction of ARCHITECTURE.md holds: import-linter's contracts
(`[tool.importlinter]` in pyproject.toml) are all kept, and every module of the sidecar has
its place in the layers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_lint_imports_keeps_every_contract() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail("lint-imports is not installed (import-linter is in the test extras)")
    proc = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_contract_says_its_rule_in_words() -> None:
    for contract in _contracts():
        name = str(contract.get("name", ""))
        assert len(name.split()) >= 5, contract


def test_every_top_level_module_has_a_layer() -> None:
    (contract,) = [c for c in _contracts() if c["type"] == "layers"]
    layers = contract["layers"]
    assert isinstance(layers, list)
    placed: set[str] = set()
    for layer in layers:
        placed |= {name.strip() for name in str(layer).replace(":", "|").split("|")}
    package = ROOT / "sidecar"
    modules = {f"sidecar.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"sidecar.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules | {"adapters"} == placed
