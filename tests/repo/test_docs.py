"""The documentation stays true to the code.

- docs/config.md is exactly what `python -m tools.config_reference` generates from the schema;
- every error code defined in sidecar/errors.py is in docs/protocol.md with its HTTP status;
- every route the HTTP app registers is documented in docs/protocol.md.

The routes are read from the source of sidecar/http/ with `ast` (building the app needs a
started Service), so the test runs without a database.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from sidecar import errors
from tools import config_reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
HTTP = ROOT / "sidecar" / "http"

_ADD_METHODS = {
    "add_get": "GET",
    "add_post": "POST",
    "add_put": "PUT",
    "add_patch": "PATCH",
    "add_delete": "DELETE",
    "add_head": "HEAD",
}
_ROUTE_DEFS = {"get": "GET", "post": "POST", "put": "PUT", "patch": "PATCH", "delete": "DELETE"}


def _protocol() -> str:
    return (DOCS / "protocol.md").read_text(encoding="utf-8")


# -- config reference ---------------------------------------------------------------------


def test_config_reference_is_current() -> None:
    expected = config_reference.render(config_reference.load_schema())
    current = (DOCS / "config.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/config.md is out of date: run python -m tools.config_reference"
    )


def test_config_reference_is_deterministic() -> None:
    schema = config_reference.load_schema()
    assert config_reference.render(schema) == config_reference.render(schema)


def test_config_reference_check_exits_1_when_stale(tmp_path: Path) -> None:
    out = tmp_path / "config.md"
    assert config_reference.main(["--check", "--output", str(out)]) == 1  # missing
    assert config_reference.main(["--output", str(out)]) == 0
    assert config_reference.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    assert config_reference.main(["--check", "--output", str(out)]) == 1


def test_config_reference_names_every_key() -> None:
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    keys = [k.path for k in config_reference.iter_keys(config_reference.load_schema())]
    assert "database.url" in keys and "collections.<collection>.read" in keys
    for key in keys:
        assert f"### `{key}`" in text or f"## `{key}`" in text, key


# -- error codes --------------------------------------------------------------------------


def error_codes() -> dict[str, int]:
    """code → HTTP status of every SidecarError class defined in sidecar/errors.py."""
    codes: dict[str, int] = {}
    for obj in vars(errors).values():
        if (
            inspect.isclass(obj)
            and issubclass(obj, errors.SidecarError)
            and obj.__module__ == errors.__name__
        ):
            codes[obj.code] = obj.status
    return codes


def test_every_error_code_is_documented_with_its_status() -> None:
    text = _protocol()
    codes = error_codes()
    assert {"unauthorized", "cursor_expired", "invalid_request", "internal"} <= set(codes)
    for code, status in codes.items():
        row = re.compile(rf"^\|\s*`{re.escape(code)}`\s*\|\s*{status}\s*\|", re.MULTILINE)
        assert row.search(text), f"docs/protocol.md has no table row `| `{code}` | {status} |`"


# -- routes -------------------------------------------------------------------------------


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route registered in sidecar/http/ (router.add_*, add_route,
    and `web.get(...)`-style route definitions)."""
    found: set[tuple[str, str]] = set()
    for file in sorted(HTTP.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, args = node.func.attr, node.args
            if name in _ADD_METHODS and args and (path := _string(args[0])):
                found.add((_ADD_METHODS[name], path))
            elif name == "add_route" and len(args) >= 2:
                method, path = _string(args[0]), _string(args[1])
                if method and path:
                    found.add((method.upper(), path))
            elif name in _ROUTE_DEFS and args and (path := _string(args[0]) or "").startswith("/"):
                found.add((_ROUTE_DEFS[name], path))
    return found


def test_routes_are_found() -> None:
    routes = registered_routes()
    assert ("GET", "/v1/pull") in routes and ("GET", "/healthz") in routes


def test_every_route_is_documented() -> None:
    text = _protocol()
    missing = [f"{m} {p}" for m, p in sorted(registered_routes()) if f"`{m} {p}" not in text]
    assert not missing, f"docs/protocol.md does not document: {', '.join(missing)}"


def test_every_error_code_has_a_troubleshooting_entry() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## `([a-z_]+)`$", text, re.MULTILINE))
    assert headings == set(error_codes())
