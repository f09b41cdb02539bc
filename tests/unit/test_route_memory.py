"""Images kept in a batch cost the size of their JSON, not orjson's output buffer.

orjson returns its output in the buffer it wrote it in (4 KiB or more, shrunk in place);
kept by the thousand in a batch, those grew the heap by about 4 KiB per value, with a
page fault for each. The route copies each value it keeps to a bytes of its own size.
Measured in a fresh interpreter (the heap of this one is not a clean slate).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import datetime, resource
    from psycopg.postgres import types as t
    from sidecar.catalog import ColumnInfo, TableInfo
    from sidecar.config.loader import load_config_text
    from sidecar.config.model import TableRef
    from sidecar.collection import Collection

    cfg = load_config_text('''
    database: {url: "postgresql://h/d"}
    auth: {jwt: {secret: "0123456789abcdef0123456789abcdef"}}
    collections:
      items: {table: items, read: "owner = :sub"}
    ''', file="t.yaml", env={})
    cols = (
        ColumnInfo("id", t["int4"].oid, "integer", False),
        ColumnInfo("owner", t["int4"].oid, "integer", False),
        ColumnInfo("note", t["text"].oid, "text", False),
        ColumnInfo("at", t["timestamptz"].oid, "timestamp with time zone", False),
    )
    table = TableInfo(TableRef("public", "items"), 1, cols, ("id",), "d", ("id",), ())
    route = Collection(cfg.collections["items"], table)
    now = datetime.datetime.now(datetime.UTC)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = [route.image_of_typed([i, i % 100, f"note {i}", now]) for i in range(100_000)]
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
)


def test_kept_images_cost_about_their_size():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    grown_mib = int(out.strip())
    # ~250 bytes of objects per image: about 25 MiB. orjson's buffers kept: over 400 MiB.
    assert grown_mib < 120, f"100,000 images grew the heap by {grown_mib} MiB"
