"""A hostile Electric `where` does not stall other clients (issue 12, item 6).

The clients run in threads of their own with plain blocking HTTP (urllib) and socket
timeouts, so a server whose event loop is frozen by one request shows up as other
requests timing out, and the test ends even then (the hostile expressions here cost tens
of seconds on the unbounded evaluator, not forever).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.adapters.test_electric import SHAPE, sc, sql
from tests.fixtures.service import Sidecar, auth

__all__ = ["sc"]  # the fixture, used here

pytestmark = pytest.mark.pg

OTHERS = 17  # other clients' pulls while the hostile requests are served
ANSWER_WITHIN = 10.0  # seconds each of them may take: generous (they take milliseconds)

# each took tens of seconds of the event loop before: a backtracking LIKE on 28-character
# titles, and an exponent literal expanded into a 300,000-digit integer
HOSTILE_LIKE = "title LIKE '%a%a%a%a%a%a%a%a%a%a%a%a%b'"
HOSTILE_NUMBER = "(1e300000)::int8 = id"


def _get(base: str, path: str, params: dict[str, str], sub: int, timeout: float) -> Any:
    """(status, JSON body) of a GET, or ("no answer", reason) when none came in time."""
    url = base.rstrip("/") + "/" + path.lstrip("/") + "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, headers=auth(sub))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
        return "no answer", repr(error)


def _scenario(base: str) -> tuple[list[Any], list[Any]]:
    """The hostile shape requests, then (while they are served) the other clients'."""
    shape = {"table": "items", "offset": "-1"}
    with ThreadPoolExecutor(OTHERS + 2) as pool:
        hostile = [
            pool.submit(_get, base, SHAPE, {**shape, "where": where}, 1, 300.0)
            for where in (HOSTILE_LIKE, HOSTILE_NUMBER)
        ]
        time.sleep(1.0)  # the hostile requests have arrived
        others = [
            pool.submit(
                _get,
                base,
                SHAPE if n % 2 else "/v1/pull",
                shape if n % 2 else {},
                100 + n,
                ANSWER_WITHIN,
            )
            for n in range(OTHERS)
        ]
        answers = [f.result() for f in others]
        return answers, [f.result() for f in hostile]


async def test_a_hostile_where_does_not_stall_other_clients(sc: Sidecar, pg_dsn: str):
    sql(
        pg_dsn,
        "INSERT INTO items (id, owner_id, title) "
        "SELECT g, 1, repeat('a', 28) FROM generate_series(10, 17) g",
    )
    await sc.caught_up(pg_dsn)
    assert sc.client is not None
    answers, (like, number) = await asyncio.to_thread(_scenario, str(sc.client.make_url("/")))

    assert [status for status, _ in answers] == [200] * OTHERS, answers
    status, body = like
    assert status == 200 and not [m for m in body if "key" in m], like
    status, problem = number
    assert status == 400 and problem["parameter"] == "where", number
    assert "value overflows numeric format" in problem["detail"], number


async def test_an_oversized_where_is_refused_with_its_code(sc: Sidecar):
    where = "id IN (" + ", ".join(str(n) for n in range(600)) + ")"  # 602 nodes
    resp = await sc.get("/" + SHAPE, params={"table": "items", "offset": "-1", "where": where})
    problem = await resp.json(content_type=None)
    assert resp.status == 400, problem
    assert problem["code"] == "expression_too_large" and problem["parameter"] == "where"

    long = "title = $1"
    params = {"table": "items", "offset": "-1", "where": long, "params[1]": "x" * 5000}
    resp = await sc.get("/" + SHAPE, params=params)
    problem = await resp.json(content_type=None)
    assert resp.status == 400 and problem["code"] == "expression_too_large", problem
