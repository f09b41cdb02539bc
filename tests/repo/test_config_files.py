"""Every sidecar config the repository ships is valid as an editor sees it: the YAML as
written, before `${VAR}` substitution, against the config's JSON Schema, found through the
file's own `yaml-language-server` modeline. The loader's own checks of the substituted
values are tests/unit/config/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from sidecar.config.schema import load_schema

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = {".git", ".venv", "node_modules", "build", "dist", ".pytest_cache"}
MODELINE = re.compile(r"#\s*yaml-language-server:\s*\$schema=(\S+)")
FENCED_YAML = re.compile(r"```ya?ml\n(.*?)```", re.DOTALL)
SHIPPED = {"config/example.yaml", "config/demo.yaml", "docker/sidecar.yaml"}
SHIPPED |= {"sidecar/demo/demo.yaml"}


def _files(*patterns: str) -> list[Path]:
    found = []
    for pattern in patterns:
        for path in ROOT.rglob(pattern):
            if not SKIPPED & set(path.relative_to(ROOT).parts):
                found.append(path)
    return sorted(found)


def _is_config(document: Any) -> bool:
    return isinstance(document, dict) and "collections" in document


def _configs() -> dict[str, str]:
    """Repository path → text of every YAML file that is a sidecar config."""
    configs = {}
    for path in _files("*.yaml", "*.yml"):
        text = path.read_text(encoding="utf-8")
        if _is_config(yaml.safe_load(text)) or MODELINE.search(text.split("\n", 1)[0]):
            configs[path.relative_to(ROOT).as_posix()] = text
    return configs


def _errors(document: Any) -> list[str]:
    validator = Draft202012Validator(load_schema())
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_the_shipped_configs_are_found() -> None:
    assert set(_configs()) >= SHIPPED


@pytest.mark.parametrize("name", sorted(_configs()))
def test_a_shipped_config_names_the_schema_in_its_first_line(name: str) -> None:
    first = _configs()[name].split("\n", 1)[0]
    match = MODELINE.fullmatch(first)
    assert match, f"{name}: the first line must be # yaml-language-server: $schema=…"
    target = (ROOT / name).parent / match[1]  # as an editor resolves it: from the file's folder
    assert target.resolve() == (ROOT / "sidecar" / "config" / "sidecar.schema.json").resolve()


@pytest.mark.parametrize("name", sorted(_configs()))
def test_a_shipped_config_is_valid_before_substitution(name: str) -> None:
    document = yaml.safe_load(_configs()[name])
    assert _is_config(document), f"{name} names the schema but is not a config"
    assert _errors(document) == []


def _documented_configs() -> list[tuple[str, str]]:
    blocks = []
    for path in _files("*.md"):
        text = path.read_text(encoding="utf-8")
        for index, match in enumerate(FENCED_YAML.finditer(text)):
            document = yaml.safe_load(match[1])
            if _is_config(document) and {"database", "auth"} <= document.keys():
                blocks.append((f"{path.relative_to(ROOT).as_posix()}#{index}", match[1]))
    return blocks


def test_the_documentation_shows_whole_configs() -> None:
    assert {name.split("#")[0] for name, _ in _documented_configs()} >= {"README.md"}


@pytest.mark.parametrize(("name", "text"), _documented_configs(), ids=lambda v: v[:40])
def test_a_whole_config_in_the_documentation_is_valid_before_substitution(
    name: str, text: str
) -> None:
    assert _errors(yaml.safe_load(text)) == [], name
