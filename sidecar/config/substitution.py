"""`${VAR}` substitution in the config's values: the environment, read when the file loads.

`${VAR}` is the value of `VAR` (an error when it is unset); `${VAR:-default}` is `default`
when `VAR` is unset or empty, as the shell does; `$${` is a literal `${`; nesting is not
supported. The reader substitutes inside every scalar value, never in keys, and re-types a
plain (unquoted) value that is entirely one substitution (`is_whole`), so
`port: ${PORT:-8080}` is an integer while `"${PORT}"` stays a string.

The JSON Schema says the same for editors: its `substitution` and `substitutedText` formats
accept these strings where the loader substitutes (`sidecar.config.schema`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["environment", "is_whole", "substitute"]

_SUBSTITUTION = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_WHOLE_SUBSTITUTION = re.compile(r"\$\{[^}]*\}")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """The variables to substitute: `env` when given, else the process's environment."""
    return os.environ if env is None else env


def is_whole(text: str) -> bool:
    """True when `text` is exactly one `${...}` (a plain value then takes its YAML type
    after substitution)."""
    return _WHOLE_SUBSTITUTION.fullmatch(text) is not None


def substitute(value: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `$${` → `${`. ValueError names what failed."""
    missing: list[str] = []

    def expand(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        body = match[1]
        variable = _VARIABLE.fullmatch(body) if body is not None else None
        if variable is None or (variable[2] is not None and "${" in variable[2]):
            shown = match[0] if body is not None else "${ without a closing }"
            raise ValueError(
                f"invalid substitution {shown}: write ${{NAME}} or ${{NAME:-default}}"
                " (nesting is not supported; $${ is a literal ${)"
            )
        name, default = variable[1], variable[2]
        found = env.get(name)
        if default is not None and not found:
            return default
        if found is None:
            missing.append(name)
            return ""
        return found

    result = _SUBSTITUTION.sub(expand, value)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        plural = "s" if len(set(missing)) > 1 else ""
        raise ValueError(
            f"environment variable{plural} {names} not set"
            f" (set it, or give a default: ${{{missing[0]}:-default}})"
        )
    return result
