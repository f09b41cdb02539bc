"""Every benchmark runs to its end at a tiny size: `make bench` does not rot unnoticed.

No timing is checked (these machines are noisy): each benchmark asserts its own
correctness (rows copied and applied, pushes applied, long-polls answered) and returns
or prints its ratio; the test checks it ran and measured something.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from bench import capture, live, membership, ndjson, push, reconcile, replicas, snapshot

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture(autouse=True)
def logging_kept() -> Iterator[None]:
    """The benchmarks send the logs to /dev/null; later tests keep theirs."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def test_snapshot() -> None:
    assert (await snapshot.run(2_000))["ratio"] > 0


async def test_capture_rounds() -> None:
    assert (await capture.run(2_000, rounds=2))["ratio"] > 0


async def test_reconcile() -> None:
    result = await reconcile.run(2_000)
    assert result["changed"] == 20 and result["ratio"] > 0 and result["peak_rss"] > 0


async def test_push() -> None:
    assert (await push.run(200, 100))["ratio"] > 0


async def test_ndjson() -> None:
    assert (await ndjson.run(2_000))["ratio"] > 0


async def test_live(capsys: pytest.CaptureFixture[str]) -> None:
    await live.run(3, 50)
    out = capsys.readouterr().out
    assert "50/50 long-polls answered" in out, out


async def test_membership(capsys: pytest.CaptureFixture[str]) -> None:
    await membership.run(rows=2_000, capture_rows=2_000, waiters=50, rounds=1)
    out = capsys.readouterr().out
    assert out.count("50/50 long-polls of distinct users answered") == 2, out
    for measured in ("nothing-new pull", "move-in of a 2,000-row", "capture, membership"):
        assert measured in out, out


async def test_capture_into_the_postgresql_store() -> None:
    assert (await capture.run(2_000, rounds=1, store="postgresql"))["ratio"] > 0


async def test_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    await replicas.run(commits=3, waiters=20, seconds=0.5)
    out = capsys.readouterr().out
    assert "commit → live client on a follower over 3 commits" in out, out
    assert "3 replicas" in out and "60 answered" in out, out
