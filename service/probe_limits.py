"""How many uploaded teachers are probed at once: at most KDSERVE_PROBE_MAX_CONCURRENT in this API
process, and KDSERVE_PROBE_MAX_PER_TENANT of one tenant's.

A probe (service/api/teachers.py) blocks a thread for as long as the teacher takes to load and run
(up to KDSERVE_PROBE_TIMEOUT_S). In the API's shared thread pool, which also runs every plain `def`
route, 40 slow uploads took all of its 40 threads and every GET waited for them. So probes run in
a pool of their own, as many threads as probes may run at once, and an upload past a limit is
refused at once, never queued (a queued upload would still hold its connection and its file):
429 `rate_limited` when its tenant already has its share in flight, else 503 `unavailable` when
the process has its maximum; the client retries later.

    limiter = ProbeLimiter(settings.probe_max_concurrent, settings.probe_max_per_tenant)
    info = await limiter.run(who.tenant, probe, ctx, path, fmt, shape, task)   # probe(...) in a thread

A slot is given back when the probe's thread has finished, even if the request was cancelled
meanwhile (a thread cannot be stopped, so it still counts). The counts change only on the event
loop (run() takes a slot, the end of the thread is handed to the loop), so they need no lock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from kdserve.service.errors import ApiError


class ProbeLimiter:
    def __init__(self, max_total: int, max_per_tenant: int):
        self.max_total, self.max_per_tenant = max_total, max_per_tenant
        self.running = 0
        self.by_tenant: Counter[str] = Counter()
        self._threads = ThreadPoolExecutor(max_total, thread_name_prefix="probe")

    def _take(self, tenant: str) -> None:
        """One probe slot for `tenant`, or 429 / 503 when none is free."""
        if self.by_tenant[tenant] >= self.max_per_tenant:
            raise ApiError(429, "rate_limited", f"tenant {tenant!r} already has {self.by_tenant[tenant]} teacher "
                           f"upload(s) being probed, its limit (KDSERVE_PROBE_MAX_PER_TENANT); retry when one is done")
        if self.running >= self.max_total:
            raise ApiError(503, "unavailable", f"{self.running} teacher uploads are being probed, the most this "
                           "server takes at once (KDSERVE_PROBE_MAX_CONCURRENT); retry shortly")
        self.running += 1
        self.by_tenant[tenant] += 1

    def _give_back(self, tenant: str) -> None:
        self.running -= 1
        self.by_tenant[tenant] -= 1
        if not self.by_tenant[tenant]:
            del self.by_tenant[tenant]

    async def run(self, tenant: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a probe thread, within a slot of `tenant`'s."""
        self._take(tenant)
        loop = asyncio.get_running_loop()
        try:
            done: Future = self._threads.submit(fn, *args)
        except RuntimeError:  # shutting down
            self._give_back(tenant)
            raise
        done.add_done_callback(lambda _: self._finished(loop, tenant))
        return await asyncio.wrap_future(done)

    def _finished(self, loop: asyncio.AbstractEventLoop, tenant: str) -> None:
        """In the probe's thread, as it ends: the slot goes back on the event loop."""
        try:
            loop.call_soon_threadsafe(self._give_back, tenant)
        except RuntimeError:  # the loop is closed: nothing is counting any more
            pass

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
