"""YAML → `Config`, with every problem located and reported together.

Three phases, each collecting problems instead of stopping at the first:

1. read (`reader`): compose the YAML (SafeLoader) keeping each node's line, reject
   duplicate keys, substitute `${VAR}` / `${VAR:-default}` inside scalar values
   (`substitution`; `$${` is a literal `${`);
2. structure (`structure`): validate against `sidecar.schema.json` (package data, `schema`)
   with jsonschema;
3. semantics (`semantics`): what the schema cannot say (durations, sizes, rates — `units` —,
   rules, cross-key checks), converting to the frozen model in `sidecar.config.model` as it
   goes.

A problem found in a phase hides later problems at the same key path (one message per
value; `problems`). Everything ends in one `ConfigError` whose problems are sorted by line.

Conventions documented here and in the schema:
- durations, sizes and rates: see `sidecar.config.units`;
- `${VAR:-default}` uses the default when VAR is unset or empty (as the shell does); a plain
  (unquoted) value that is entirely one substitution is re-typed after substitution, so
  `port: ${PORT:-8080}` is an integer while `"${PORT}"` stays a string; keys are never
  substituted;
- `store.path`: `~` is expanded and a relative path is relative to the directory of the
  config file (`:memory:` is kept as is; with `load_config_text` and a `<...>` file name,
  relative paths are kept relative);
- identifiers (tables, columns) are exact and case-sensitive: the sidecar quotes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sidecar.config.model import Config
from sidecar.config.problems import Locations, Problems
from sidecar.config.reader import UNREADABLE, Reader
from sidecar.config.semantics import Builder
from sidecar.config.structure import check_structure
from sidecar.config.substitution import environment
from sidecar.errors import ConfigError, ConfigProblem

__all__ = ["load_config", "load_config_text", "load_document"]


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config file at `path`; raise `ConfigError` with every problem."""
    file = os.fspath(path)
    try:
        with open(file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        problem = ConfigProblem(file, "", None, f"cannot read the file: {reason}")
        raise ConfigError([problem]) from error
    base_dir = os.path.dirname(os.path.abspath(file))
    return _load(text, file, env, base_dir)


def load_config_text(
    text: str, file: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Load a config from its text; `file` names it in problems (and anchors relative paths
    unless it looks like `<config>`)."""
    base_dir = None if file.startswith("<") else os.path.dirname(os.path.abspath(file))
    return _load(text, file, env, base_dir)


def load_document(text: str, file: str = "<config>", env: Mapping[str, str] | None = None) -> Any:
    """The YAML as plain data after `${VAR}` substitution, not validated (e.g. to validate
    it with another JSON Schema tool); `ConfigError` on syntax or substitution problems."""
    problems = Problems(file, Locations(text))
    data = Reader(text, environment(env), problems).read()
    problems.raise_if_any()
    return None if data is UNREADABLE else data


def _load(text: str, file: str, env: Mapping[str, str] | None, base_dir: str | None) -> Config:
    problems = Problems(file, Locations(text))
    data = Reader(text, environment(env), problems).read()
    if data is UNREADABLE:
        problems.raise_if_any()
    problems.next_phase()
    check_structure(data, problems)
    problems.next_phase()
    config = Builder(file, base_dir, problems).config(data)
    problems.raise_if_any()
    return config
