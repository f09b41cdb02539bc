"""No module of `sidecar/` or `adapters/` is over 600 lines: a module that grows past it
is split along its seams (see ARCHITECTURE.md's module map)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 600


def _lines(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def test_no_module_is_over_the_limit() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): _lines(path)
        for package in ("sidecar", "adapters")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert len(sizes) > 50  # the walk found the packages
    over = {name: n for name, n in sizes.items() if n > LIMIT}
    assert not over, f"modules over {LIMIT} lines: {over}"
