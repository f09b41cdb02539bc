"""`${VAR}` substitution (`sidecar.config.substitution`) and the JSON Schema's two formats
for it (`substitution`, `substitutedText`), which must accept exactly what the loader
substitutes."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config.schema import load_schema
from sidecar.config.substitution import environment, is_whole, substitute


class _EveryName(Mapping[str, str]):
    """An environment in which every variable is set (to `value`): whether a text is
    substituted must not depend on which names the test happens to define."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __getitem__(self, name: str) -> str:
        return self.value

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


ENV_A = _EveryName("1")
ENV_B = _EveryName("2")


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(load_schema()["$defs"][name]["pattern"])


def _substitutes(text: str) -> bool | None:
    """True when the loader replaces at least one `${...}` of `text`, False when it
    replaces none, None when it refuses the text."""
    try:
        first, second = substitute(text, ENV_A), substitute(text, ENV_B)
    except ValueError:
        return None
    return first != second


def test_variables_defaults_and_the_escape() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert substitute("${SET}", env) == "v"
    assert substitute("${UNSET:-d}/${EMPTY:-e}/${SET:-f}", env) == "d/e/v"
    assert substitute("a$${SET}b", env) == "a${SET}b"
    assert substitute("no dollar", env) == "no dollar"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${UNSET}", "environment variable UNSET not set"),
        ("${A}${UNSET}${OTHER}", "environment variables UNSET, OTHER not set"),
        ("${1A}", "invalid substitution ${1A}"),
        ("${A:-${B}}", "nesting is not supported"),
        ("${A", "${ without a closing }"),
    ],
)
def test_refusals_name_what_failed(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        substitute(text, {"A": "1"})


def test_is_whole_is_one_substitution_and_nothing_else() -> None:
    assert is_whole("${PORT}") and is_whole("${PORT:-8080}")
    assert not is_whole("${A}${B}")
    assert not is_whole("x${PORT}") and not is_whole("${PORT}x") and not is_whole("$${PORT}")


def test_environment_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_TEST_VARIABLE", "here")
    assert environment(None)["SIDECAR_TEST_VARIABLE"] == "here"
    assert environment({}) == {}


SAMPLES = [
    "${A}",
    "${A:-}",
    "${A:-8080}",
    "${A:-x$}",
    "${A:-a b}",
    "${A:-$${B}",
    "${A:-${B}}",
    "$${A}",
    "$$${A}",
    "$$$${A}",
    "x${A}y",
    "${A}${B}",
    "${1A}",
    "${A-b}",
    "${A",
    "${}",
    "plain",
    "$",
    "${A} $${",
    "${A}}",
    "a$b${B1:-d}",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_the_text_format_is_exactly_what_the_loader_substitutes(text: str) -> None:
    assert bool(_pattern("substitutedText").search(text)) == bool(_substitutes(text))


@pytest.mark.parametrize("text", SAMPLES)
def test_the_whole_value_format_is_exactly_what_the_loader_retypes(text: str) -> None:
    expected = bool(_substitutes(text)) and is_whole(text)
    assert bool(_pattern("substitution").search(text)) == expected


@given(st.text(alphabet="${}:-AB1 x", max_size=14))
def test_the_formats_agree_with_the_loader_on_any_text(text: str) -> None:
    substituted = _substitutes(text)
    assert bool(_pattern("substitutedText").search(text)) == bool(substituted)
    assert bool(_pattern("substitution").search(text)) == (bool(substituted) and is_whole(text))
