"""Adapter tests: real npm client libraries, run headless in Node against a real sidecar.

`node_project(name, dependencies)` installs the packages once per machine into a cache
directory keyed by the dependency list (CI's fresh machine downloads them from the npm
registry) and returns a directory whose `node_modules` a script placed in it resolves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import sidecar_factory  # noqa: F401 (a fixture)

CACHE = Path(os.environ.get("SIDECAR_NPM_CACHE", Path.home() / ".cache" / "sidecar-tests"))


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are needed for the adapter tests (apt-get install nodejs npm)")
    return npm


@pytest.fixture(scope="session")
def node_project() -> Callable[[str, dict[str, str]], Path]:
    def make(name: str, dependencies: dict[str, str]) -> Path:
        spec = json.dumps(dependencies, sort_keys=True)
        digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
        root = CACHE / f"{name}-{digest}"
        if not (root / ".installed").exists():
            root.mkdir(parents=True, exist_ok=True)
            package = {"name": f"sidecar-test-{name}", "private": True, "type": "module"}
            package["dependencies"] = dependencies
            (root / "package.json").write_text(json.dumps(package, indent=2))
            subprocess.run(
                [_npm(), "install", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=root,
                check=True,
                timeout=600,
            )
            (root / ".installed").write_text(spec)
        return root

    return make
