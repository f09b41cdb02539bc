"""sidecar/http/openapi.json is a valid OpenAPI 3.1 document true to the code.

- it validates as OpenAPI 3.1 (openapi-spec-validator), every schema in it is a valid
  JSON Schema 2020-12 and every `$ref` resolves;
- its paths are exactly the routes `create_app` registers (read from the source with `ast`:
  building the app needs a started Service), and every query parameter a handler reads is
  documented;
- the `code` enum of `Problem` is exactly the codes of sidecar/errors.py, and `Problem`
  ties each code to its HTTP status as the error classes do;
- every response carries `X-Request-Id`, every problem response's status is its schema's.

No database: the live server is checked against the document in
tests/integration/test_openapi.py.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sidecar import errors
from sidecar.http import routes

ROOT = Path(__file__).resolve().parents[2]
HTTP = ROOT / "sidecar" / "http"
DOC_PATH = HTTP / "openapi.json"
DOC: dict[str, Any] = json.loads(DOC_PATH.read_text(encoding="utf-8"))
BASE = "urn:sidecar:openapi"
REGISTRY: Registry = Registry().with_resource(
    BASE, Resource.from_contents(DOC, default_specification=DRAFT202012)
)
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json"}


def validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` in the document (its refs resolved there)."""
    return Draft202012Validator(
        {"$ref": f"{BASE}#{pointer}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def at(pointer: str) -> Any:
    node: Any = DOC
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = at(node["$ref"][1:])
    return node


def walk(node: Any, pointer: str = "") -> Iterator[tuple[str, Any]]:
    yield pointer, node
    if isinstance(node, dict):
        for key, value in node.items():
            escaped = key.replace("~", "~0").replace("/", "~1")
            yield from walk(value, f"{pointer}/{escaped}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{pointer}/{i}")


def schemas() -> Iterator[tuple[str, Any]]:
    """(pointer, schema) of every schema object the document has outside other schemas."""
    for name, schema in DOC["components"]["schemas"].items():
        yield f"/components/schemas/{name}", schema
    for pointer, node in walk(DOC):
        if pointer.startswith("/components/schemas/"):
            continue
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            yield f"{pointer}/schema", node["schema"]
        if isinstance(node, dict) and isinstance(node.get("x-itemSchema"), dict):
            yield f"{pointer}/x-itemSchema", node["x-itemSchema"]


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


# -- the document -----------------------------------------------------------------------------


def test_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate_openapi(DOC)  # picks the 3.1 validator from `openapi`


def test_served_document_is_this_file() -> None:
    routes._openapi_document.cache_clear()
    assert routes._openapi_document() == DOC_PATH.read_bytes()


@pytest.mark.parametrize("pointer", [p for p, _ in schemas()])
def test_schemas_are_valid_2020_12(pointer: str) -> None:
    Draft202012Validator.check_schema(at(pointer))
    validator(pointer)  # builds


def test_every_ref_resolves() -> None:
    refs = [(p, n["$ref"]) for p, n in walk(DOC) if isinstance(n, dict) and "$ref" in n]
    assert len(refs) > 50
    for pointer, ref in refs:
        assert ref.startswith("#/"), f"{pointer}: only local refs: {ref}"
        try:
            at(ref[1:])
        except (KeyError, IndexError, ValueError):
            pytest.fail(f"{pointer}: $ref {ref} does not resolve")


def test_examples_are_valid() -> None:
    checked = 0
    for pointer, schema in schemas():
        for inner, node in walk(schema, pointer):
            if isinstance(node, dict) and isinstance(node.get("examples"), list):
                for example in node["examples"]:
                    errs = list(validator(inner).iter_errors(example))
                    assert not errs, f"{inner}: example {example!r}: {errs[0].message}"
                    checked += 1
    assert checked >= 5


def test_every_component_is_used() -> None:
    refs = {n["$ref"] for _, n in walk(DOC) if isinstance(n, dict) and "$ref" in n}
    unused = [
        f"#/components/{kind}/{name}"
        for kind in ("schemas", "parameters", "headers")
        for name in DOC["components"][kind]
        if f"#/components/{kind}/{name}" not in refs
    ]
    assert not unused, unused


# -- routes -----------------------------------------------------------------------------------

_ADD = {"add_get": "GET", "add_post": "POST", "add_put": "PUT", "add_patch": "PATCH"}
_ADD |= {"add_delete": "DELETE", "add_head": "HEAD"}


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every `app.router.add_*("/path", …)` in sidecar/http/app.py."""
    tree = ast.parse((HTTP / "app.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _ADD
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add((_ADD[node.func.attr], node.args[0].value))
    return found


def test_paths_are_the_registered_routes() -> None:
    registered = registered_routes()
    assert ("GET", "/v1/pull") in registered and ("POST", "/v1/push") in registered
    documented = {(method, path) for method, path, _ in operations()}
    assert documented == registered, (
        f"not documented: {sorted(registered - documented)}; "
        f"documented but not served: {sorted(documented - registered)}"
    )


def test_operations_have_ids_and_unique_ones() -> None:
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))


def test_query_parameters_read_by_handlers_are_documented() -> None:
    source = (HTTP / "routes.py").read_text(encoding="utf-8")
    read = set(re.findall(r'request\.query(?:\.get\(|\[)\s*"(\w+)"', source))
    read |= set(re.findall(r'_?(?:int|bool|float)_param\(\s*request,\s*"(\w+)"', source))
    assert {"cursor", "limit", "heartbeat", "key"} <= read
    documented = {
        resolve(p)["name"]
        for _, _, op in operations()
        for p in op.get("parameters", [])
        if resolve(p)["in"] == "query"
    }
    assert read <= documented, f"not documented: {sorted(read - documented)}"


def test_security() -> None:
    scheme = DOC["components"]["securitySchemes"]["bearer"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert DOC["security"] == [{"bearer": []}]
    for _, path, op in operations():
        if path in PUBLIC:
            assert op.get("security") == [], f"{path} needs no token"
        else:
            assert "security" not in op, f"{path} needs a token (the default)"
            assert "401" in op["responses"], f"{path}: a token can be refused"


# -- errors -----------------------------------------------------------------------------------


def error_statuses() -> dict[str, set[int]]:
    """code → HTTP statuses of the SidecarError classes defined in sidecar/errors.py."""
    codes: dict[str, set[int]] = {}
    for obj in vars(errors).values():
        if (
            inspect.isclass(obj)
            and issubclass(obj, errors.SidecarError)
            and obj.__module__ == errors.__name__
        ):
            codes.setdefault(obj.code, set()).add(obj.status)
    return codes


def test_problem_code_enum_is_every_error_code() -> None:
    enum = DOC["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == set(error_statuses())


def problem(code: str, status: int) -> dict[str, Any]:
    return {
        "type": f"https://sidecar.dev/problems/{code}",
        "title": "T",
        "status": status,
        "code": code,
        "detail": "d",
        "instance": "/v1/pull",
        "request_id": "abc",
    }


def test_problem_ties_each_code_to_its_status() -> None:
    check = validator("/components/schemas/Problem")
    for code, statuses in error_statuses().items():
        for status in range(400, 600):
            valid = check.is_valid(problem(code, status))
            assert valid == (status in statuses), (code, status)
        other = {**problem(code, min(statuses)), "type": "https://sidecar.dev/problems/x"}
        assert not check.is_valid(other), code


def test_a_real_problem_is_valid() -> None:
    exc = errors.InvalidRequest("limit must be an integer", parameter="limit")
    body = exc.to_problem(instance="/v1/pull") | {"request_id": "r1"}
    assert validator("/components/schemas/Problem").is_valid(body)
    response = "/components/responses/InvalidRequest/content/application~1problem+json"
    assert validator(f"{response}/schema").is_valid(body)


def test_problem_responses_have_their_status() -> None:
    for method, path, op in operations():
        for status, response in op["responses"].items():
            content = resolve(response).get("content", {})
            if "application/problem+json" not in content:
                continue
            schema = content["application/problem+json"]["schema"]
            consts = [
                part["properties"]["status"]["const"]
                for part in schema["allOf"]
                if "status" in part.get("properties", {})
            ]
            assert consts == [int(status)], (method, path, status)


def test_every_response_carries_the_request_id() -> None:
    responses = [r for _, _, op in operations() for r in op["responses"].values()]
    responses += DOC["components"]["responses"].values()
    for response in responses:
        headers = resolve(response).get("headers", {})
        assert headers.get("X-Request-Id") == {"$ref": "#/components/headers/X-Request-Id"}


def test_every_operation_documents_500() -> None:
    for _, path, op in operations():
        assert op["responses"].get("500") == {"$ref": "#/components/responses/Internal"}, path
