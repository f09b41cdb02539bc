"""In-process wake-ups (`sidecar.notify`): a commit wakes the waiters of the scopes it
touched and no others; watching before reading misses nothing."""

from __future__ import annotations

import asyncio

from sidecar.notify import Notifier, wait_event


async def test_a_commit_wakes_only_the_scopes_it_touched() -> None:
    n = Notifier()
    with n.watch(["a"]) as on_a, n.watch(["b"]) as on_b, n.watch(["a", "c"]) as on_ac:
        assert n.waiter_count() == 3
        assert n.publish(["a"]) == 2
        assert on_a.is_set() and on_ac.is_set() and not on_b.is_set()
        assert n.publish(["z"]) == 0
        assert not on_b.is_set()


async def test_a_waiter_on_several_touched_scopes_is_woken_once() -> None:
    n = Notifier()
    with n.watch(["a", "b", "a"]) as ev:
        assert n.waiter_count() == 1
        assert n.publish(["a", "b"]) == 1 and ev.is_set()


async def test_watching_any_commit() -> None:
    n = Notifier()
    with n.watch(None) as anything, n.watch(["a"]) as on_a:
        assert n.publish(["b"]) == 1
        assert anything.is_set() and not on_a.is_set()
        assert n.publish([]) == 1  # a commit that touched no scope still wakes it


async def test_a_commit_between_the_read_and_the_wait_is_not_missed() -> None:
    """Watch, read the store, then wait: a commit landing after the read and before the
    wait has already set the event."""
    n = Notifier()
    with n.watch(["a"]) as ev:
        # ... the caller reads the store here and finds nothing new ...
        n.publish(["a"])  # a commit lands before the caller waits
        assert await wait_event(ev, timeout=0.01)


async def test_a_waiter_is_woken_while_it_waits() -> None:
    n = Notifier()
    with n.watch(["a"]) as ev:
        waiting = asyncio.create_task(wait_event(ev, timeout=5))
        await asyncio.sleep(0)
        assert not waiting.done()
        n.publish(["a"])
        assert await waiting


async def test_no_commit_times_out() -> None:
    n = Notifier()
    with n.watch(["a"]) as ev:
        n.publish(["b"])
        assert not await wait_event(ev, timeout=0.01)


async def test_leaving_the_watch_forgets_the_waiter() -> None:
    n = Notifier()
    with n.watch(["a", "b"]) as ev:
        pass
    with n.watch(None):
        pass
    assert n.waiter_count() == 0 and dict(n._waiters) == {} and n._any == set()
    assert n.publish(["a", "b"]) == 0 and not ev.is_set()
    with n.watch(["a"]), n.watch(["a"]) as second:
        pass
    assert n.waiter_count() == 0 and dict(n._waiters) == {}
    assert not second.is_set()
