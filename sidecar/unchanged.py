"""The marker of a column value the stream did not resend: :data:`UNCHANGED`.

pgoutput does not resend an out-of-line (TOASTed) value that an UPDATE left alone (tuple
column kind ``'u'``); the decoder (``capture/pgoutput.py``) puts :data:`UNCHANGED` in its
place and the route (``collection.py``) fills it in from the stored row. Both import it from
here, so nothing below capture imports capture. This module imports nothing.
"""

from __future__ import annotations

from typing import Final

__all__ = ["UNCHANGED", "Unchanged"]


class Unchanged:
    """Type of :data:`UNCHANGED`: a column whose TOASTed value was not changed.

    pgoutput does not resend an out-of-line value that an UPDATE left alone (tuple
    column kind ``'u'``); the consumer takes it from its own copy of the row.
    """

    __slots__ = ()
    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        # Pickle/copy as a reference to the module global: stays a singleton.
        return "UNCHANGED"


UNCHANGED: Final[Unchanged] = Unchanged()
"""Sentinel value of a column whose unchanged TOASTed value was not sent (kind ``'u'``)."""
