"""service/serving/v2.py Memo, which keeps /v2's API-key and model lookups off the database: one
lookup per key in flight however many requests wait, a refresh ahead of expiry that no request
waits for, failures never memoised, and drop() beating a lookup in flight."""

from __future__ import annotations

import asyncio
import threading
import time

from kdserve.service.serving.v2 import Memo

TTL = 0.4  # the refresh starts in the last REFRESH_FRACTION (half) of it


class Lookups:
    """Blocking lookups that take a while, as a database read does, and count their calls."""

    def __init__(self) -> None:
        self.calls: list[object] = []  # the lookups started
        self.done: list[object] = []   # the lookups returned
        self.lock = threading.Lock()

    def of(self, value: object, seconds: float = 0.05, until: threading.Event | None = None):
        """A lookup of `value` that takes `seconds`, or lasts until `until` is set (at most 10 s)."""
        def lookup():
            with self.lock:
                self.calls.append(value)
            if until is None:
                time.sleep(seconds)
            else:
                until.wait(10)
            with self.lock:
                self.done.append(value)
            if isinstance(value, Exception):
                raise value
            return value
        return lookup


def test_concurrent_misses_share_one_lookup():
    async def run():
        memo, lookups = Memo(TTL, 16), Lookups()
        answers = await asyncio.gather(*(memo.get("k", lookups.of(i)) for i in range(20)))
        assert lookups.calls == [0] and set(answers) == {0}
        assert await memo.get("k", lookups.of("unused")) == 0 and lookups.calls == [0]

    asyncio.run(run())


def test_an_entry_is_refreshed_before_it_expires_without_anyone_waiting():
    async def run():
        memo, lookups = Memo(TTL, 16), Lookups()
        assert await memo.get("k", lookups.of("old")) == "old"
        await asyncio.sleep(TTL * 0.6)  # in its last half: answered from memory, refreshed behind
        refresh = threading.Event()  # the refresh's lookup cannot finish before the test sets this
        assert await memo.get("k", lookups.of("new", until=refresh)) == "old"
        assert await memo.get("k", lookups.of("again")) == "old"  # one refresh in flight, not two
        assert "new" not in lookups.done  # both answered while the refresh was held back
        refresh.set()
        # until the refresh lands, "old" again; "unused" is never looked up: while the refresh is in
        # flight no second one starts, and once the entry expires its caller awaits the one in flight
        for _ in range(500):
            if await memo.get("k", lookups.of("unused")) == "new":
                break
            await asyncio.sleep(0.01)
        assert await memo.get("k", lookups.of("unused")) == "new" and lookups.calls == ["old", "new"]

    asyncio.run(run())


def test_a_failed_lookup_reaches_every_waiter_and_is_not_memoised():
    async def run():
        memo, lookups = Memo(TTL, 16), Lookups()
        failures = await asyncio.gather(*(memo.get("k", lookups.of(KeyError("gone"))) for _ in range(5)),
                                        return_exceptions=True)
        assert all(isinstance(f, KeyError) for f in failures) and len(lookups.calls) == 1
        assert await memo.get("k", lookups.of("back")) == "back"

    asyncio.run(run())


def test_a_failed_refresh_drops_the_entry():
    """A key revoked or a model deleted elsewhere: the refresh fails, and the next request looks
    it up itself (and gets the failure) instead of being answered from memory."""
    async def run():
        memo, lookups = Memo(TTL, 16), Lookups()
        await memo.get("k", lookups.of("valid"))
        await asyncio.sleep(TTL * 0.6)
        assert await memo.get("k", lookups.of(PermissionError("revoked"))) == "valid"
        await asyncio.sleep(0.1)
        try:
            await memo.get("k", lookups.of(PermissionError("revoked")))
        except PermissionError:
            pass
        else:
            raise AssertionError("a failed refresh left the entry in the memo")

    asyncio.run(run())


def test_drop_forgets_entries_and_what_lookups_in_flight_read():
    async def run():
        memo, lookups = Memo(TTL, 16), Lookups()
        await memo.get("a", lookups.of("model-a"))
        await memo.get("b", lookups.of("model-b"))
        in_flight = asyncio.ensure_future(memo.get("c", lookups.of("model-a", seconds=0.1)))
        await asyncio.sleep(0.02)
        memo.drop(lambda value: value == "model-a")
        assert await in_flight == "model-a"  # its caller is answered…
        assert await memo.get("c", lookups.of("deleted")) == "deleted"  # …but it was not memoised
        assert await memo.get("a", lookups.of("deleted")) == "deleted"
        assert await memo.get("b", lookups.of("unused")) == "model-b"

    asyncio.run(run())
