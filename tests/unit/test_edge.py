"""The request helpers shared by the HTTP handlers and the adapters (`sidecar.edge`), on
requests built in memory: parameter bounds, ETags and revalidation, JSON bodies."""

from __future__ import annotations

import asyncio
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from sidecar.edge import (
    COMPRESS_FROM,
    bool_param,
    etag_of,
    etags_in,
    float_param,
    int_param,
    json_body,
    json_response,
    revalidated,
)
from sidecar.errors import InvalidRequest, PayloadTooLarge


def get(query: str = "", **headers: str) -> web.Request:
    path = "/x?" + query if query else "/x"
    return make_mocked_request("GET", path, headers=CIMultiDict(headers))


def refusal(call: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        call()  # type: ignore[operator]
    return caught.value


# -- parameters -----------------------------------------------------------------------------


def test_int_param_default_bounds_and_refusals() -> None:
    assert int_param(get(), "limit", 50, 1, 100) == 50
    assert int_param(get("limit="), "limit", 50, 1, 100) == 50  # empty is absent
    assert int_param(get("limit=1"), "limit", 50, 1, 100) == 1  # both bounds included
    assert int_param(get("limit=100"), "limit", 50, 1, 100) == 100
    assert int_param(get("limit=-3"), "limit", 50, -5, 0) == -3
    for raw in ("0", "101", "-1"):
        exc = refusal(lambda raw=raw: int_param(get(f"limit={raw}"), "limit", 50, 1, 100))
        assert exc.detail == "limit must be between 1 and 100"
        assert exc.extra == {"parameter": "limit"} and exc.status == 400
    for raw in ("ten", "1.5", "1e3"):
        exc = refusal(lambda raw=raw: int_param(get(f"limit={raw}"), "limit", 50, 1, 100))
        assert exc.detail == "limit must be an integer" and exc.extra == {"parameter": "limit"}


def test_bool_param_forms() -> None:
    assert bool_param(get(), "live") is False
    for raw in ("true", "TRUE", "1", "yes", "Yes"):
        assert bool_param(get(f"live={raw}"), "live") is True
    for raw in ("false", "False", "0", "no", ""):
        assert bool_param(get(f"live={raw}"), "live") is False
    for raw in ("maybe", "2", "on"):
        exc = refusal(lambda raw=raw: bool_param(get(f"live={raw}"), "live"))
        assert exc.detail == "live must be true or false" and exc.extra == {"parameter": "live"}


def test_float_param_default_bounds_and_refusals() -> None:
    assert float_param(get(), "timeout", 20.0, 60.0) == 20.0
    assert float_param(get("timeout="), "timeout", 20.0, 60.0) == 20.0
    assert float_param(get("timeout=0"), "timeout", 20.0, 60.0) == 0.0
    assert float_param(get("timeout=0.25"), "timeout", 20.0, 60.0) == 0.25
    assert float_param(get("timeout=60"), "timeout", 20.0, 60.0) == 60.0
    for raw in ("-0.1", "60.5", "inf"):
        exc = refusal(lambda raw=raw: float_param(get(f"timeout={raw}"), "timeout", 20.0, 60.0))
        assert exc.detail == "timeout must be between 0 and 60"
        assert exc.extra == {"parameter": "timeout"}
    exc = refusal(lambda: float_param(get("timeout=soon"), "timeout", 20.0, 60.0))
    assert exc.detail == "timeout must be a number of seconds"
    nan = refusal(lambda: float_param(get("timeout=nan"), "timeout", 20.0, 60.0))
    assert nan.detail == "timeout must be between 0 and 60"  # NaN is in no range


# -- ETags ----------------------------------------------------------------------------------


def test_etag_is_strong_and_over_the_exact_bytes() -> None:
    tag = etag_of(b'{"a":1}')
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 26
    assert etag_of(b'{"a":1}') == tag
    assert etag_of(b'{"a": 1}') != tag


def test_if_none_match_forms() -> None:
    assert etags_in("") == set()
    assert etags_in('"a"') == {'"a"'}
    assert etags_in('"a", "b",,  "c" ') == {'"a"', '"b"', '"c"'}  # a list, spaces, empties
    assert etags_in('W/"a", "b"') == {'"a"', '"b"'}  # weak tags compare as strong ones
    assert etags_in("*") == {"*"}  # kept as it is: not a wildcard (see below)


def test_revalidated_answers_304_for_a_current_copy() -> None:
    body = b'{"changes":[]}'
    tag = etag_of(body)
    fresh = revalidated(get(), body, "private, no-cache")
    assert fresh.status == 200 and fresh.body == body
    assert fresh.headers["ETag"] == tag and fresh.headers["Vary"] == "Authorization"
    assert fresh.headers["Cache-Control"] == "private, no-cache"
    assert fresh.content_type == "application/json"
    for header in (tag, f"W/{tag}", f'"other", {tag}', f'W/"other", W/{tag}'):
        resp = revalidated(get(**{"If-None-Match": header}), body, "private, no-cache")
        assert resp.status == 304 and resp.body is None, header
        assert resp.headers["ETag"] == tag and resp.headers["Cache-Control"] == "private, no-cache"
    for header in ('"other"', 'W/"other"', tag[:-2] + '"', "*"):
        # `*` is not treated as "any representation": the full answer, as before the move
        resp = revalidated(get(**{"If-None-Match": header}), body, "private, no-cache")
        assert resp.status == 200 and resp.body == body, header


def test_revalidated_uses_a_given_etag() -> None:
    resp = revalidated(get(**{"If-None-Match": '"memo"'}), b"{}", "private", '"memo"')
    assert resp.status == 304 and resp.headers["ETag"] == '"memo"'


def test_revalidated_compresses_only_large_bodies() -> None:
    small = revalidated(get(), b"[" + b"1," * 10 + b"1]", "private, no-cache")
    large = revalidated(get(), b"[" + b"1," * COMPRESS_FROM + b"1]", "private, no-cache")
    assert small.compression is False
    assert large.compression is True


def test_json_response() -> None:
    resp = json_response({"status": "ok", "n": [1, None]})
    assert resp.status == 200 and resp.content_type == "application/json"
    assert isinstance(resp.body, bytes)
    assert orjson.loads(resp.body) == {"status": "ok", "n": [1, None]}
    assert json_response({}, status=201).status == 201


# -- bodies ---------------------------------------------------------------------------------


async def test_json_body_refuses_a_declared_size_past_the_limit() -> None:
    request = make_mocked_request("POST", "/x", headers={"Content-Length": "101"})
    with pytest.raises(PayloadTooLarge, match="larger than 100 bytes"):
        await json_body(request, 100)


def posted(data: bytes) -> web.Request:
    payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(data)
    payload.feed_eof()
    headers = {"Content-Length": str(len(data))}
    return make_mocked_request("POST", "/x", headers=headers, payload=payload)


async def test_json_body_parses_or_refuses_what_is_not_json() -> None:
    assert await json_body(posted(b'{"mutations": []}'), 100) == {"mutations": []}
    assert await json_body(posted(b"[1, 2]"), 100) == [1, 2]
    with pytest.raises(InvalidRequest, match="the body is not valid JSON"):
        await json_body(posted(b"{mutations"), 100)
    with pytest.raises(InvalidRequest, match="the body is not valid JSON"):
        await json_body(posted(b""), 100)
