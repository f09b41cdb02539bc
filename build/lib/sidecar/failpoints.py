"""Failpoints: named places where a test can make the process die on purpose.

`SIDECAR_FAILPOINTS="push.after_commit=0.3"` makes the process exit at once, without any
cleanup (as a kill -9 would), with probability 0.3 each time that point is reached. Off
unless the variable is set; read at each hit so tests can set it per process.
"""

from __future__ import annotations

import os
import random


def hit(name: str) -> None:
    spec = os.environ.get("SIDECAR_FAILPOINTS")
    if not spec:
        return
    for item in spec.split(","):
        point, _, prob = item.partition("=")
        if point.strip() == name and random.random() < float(prob or 1):
            os._exit(137)
