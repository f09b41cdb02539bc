"""Phase 1 of loading a config: the YAML text → plain data, every node located.

`Reader` composes the YAML with PyYAML's SafeLoader, then builds the data itself so that it
can record each key path's nodes (`problems.Locations`), refuse duplicate keys, bound alias
expansion ("billion laughs"), resolve `<<` merges, keep dates as text, and substitute
`${VAR}` inside scalar values (`substitution`). Problems are added to a `Problems`, never
raised; a text that cannot be composed at all reads as `UNREADABLE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from sidecar.config.problems import KeyPath, Problems, is_secret
from sidecar.config.substitution import is_whole, substitute

__all__ = ["UNREADABLE", "Reader"]

UNREADABLE: Any = object()  # the YAML could not be composed at all

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NODE_BUDGET = 100_000  # values built, aliases expanded: a bound on "billion laughs"


class Reader:
    """Composes the YAML and builds plain data, recording every node's location."""

    def __init__(self, text: str, env: Mapping[str, str], problems: Problems) -> None:
        self.text = text
        self.env = env
        self.problems = problems
        self.where = problems.where
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()
        self._open: set[int] = set()
        self._budget = _NODE_BUDGET

    def read(self) -> Any:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            self.problems.add((), _yaml_message(error, self.text), line=_yaml_line(error))
            return UNREADABLE
        except (yaml.YAMLError, RecursionError) as error:
            self.problems.add((), f"not readable as YAML: {error}")
            return UNREADABLE
        if root is None:
            self.problems.add((), "the file is empty: expected database, auth and collections")
            return UNREADABLE
        return self._value((), None, root)

    def _value(self, path: KeyPath, key: yaml.Node | None, node: yaml.Node) -> Any:
        self.where.record(path, key, node)
        self._budget -= 1
        if self._budget < 0:
            if self._budget == -1:
                self.problems.add(path, "the document is too large (aliases expand too much)")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(path, node)
        if id(node) in self._open:
            self.problems.add(path, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            return self._collection(path, node)
        finally:
            self._open.discard(id(node))

    def _collection(self, path: KeyPath, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [self._value((*path, i), None, item) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            return self._mapping(path, node)
        self.problems.add(path, f"unsupported YAML tag {node.tag}")
        return None

    def _mapping(self, path: KeyPath, node: yaml.MappingNode) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                result.update(self._merged(path, value_node))
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(path, key_node, lines)
            if key is not None:
                result[key] = self._value((*path, key), key_node, value_node)
        return result

    def _merged(self, path: KeyPath, node: yaml.Node) -> dict[str, Any]:
        """The mappings of a `<<` merge key (the first of a list wins, as YAML says)."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        result: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode) or id(source) in self._open:
                self.problems.add(path, "<< (merge) takes a mapping or a list of mappings")
                continue
            self._open.add(id(source))
            try:
                result.update(self._mapping(path, source))
            finally:
                self._open.discard(id(source))
        return result

    def _key(self, path: KeyPath, node: yaml.Node, lines: dict[str, int]) -> str | None:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            self.problems.add(path, "keys must be plain strings", line=line)
            return None
        key = str(node.value)
        if key in lines:
            self.problems.add(
                (*path, key), f"duplicate key {key!r} (first on line {lines[key]})", line=line
            )
            return None
        lines[key] = line
        return key

    def _scalar(self, path: KeyPath, node: yaml.ScalarNode) -> Any:
        value, tag = str(node.value), node.tag
        if "${" in value:
            try:
                value = substitute(value, self.env)
            except ValueError as error:
                self.problems.add(path, str(error))
                return None
            if (
                node.style is None
                and tag == _STR_TAG
                and is_whole(node.value)
                and not is_secret(path)  # a numeric passphrase is a string all the same
            ):
                # types-PyYAML leaves BaseResolver.resolve unannotated (it returns the tag).
                tag = self._resolver.resolve(  # type: ignore[no-untyped-call]
                    yaml.ScalarNode, value, (True, False)
                )
        if tag == _TIMESTAMP_TAG:
            return value  # dates stay text: nothing in the config is a date
        resolved = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
        try:
            return self._constructor.construct_object(resolved)
        except (yaml.YAMLError, ValueError, TypeError) as error:
            self.problems.add(path, f"cannot read this value: {error}")
            return None


def _yaml_line(error: yaml.MarkedYAMLError) -> int | None:
    mark = error.problem_mark or error.context_mark
    return mark.line + 1 if mark is not None else None


def _yaml_message(error: yaml.MarkedYAMLError, source: str) -> str:
    parts = [error.context, error.problem]
    if error.context_mark is not None and error.problem_mark is not None and error.context:
        parts[0] = f"{error.context} (line {error.context_mark.line + 1})"
    message = "invalid YAML: " + " ".join(part for part in parts if part)
    line, lines = _yaml_line(error), source.split("\n")
    source_line = lines[line - 1] if line and line <= len(lines) else ""
    if "flow" in (error.context or "") and "${" in source_line:
        message += ' (inside {...} or [...], quote a value using ${...}: {url: "${DATABASE_URL}"})'
    return message
