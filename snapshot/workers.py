"""The worker pool that frames are compressed, sealed, checked and copied on: results in
submission order, at most a bounded window of items in flight. lz4.block, xxhash, AES-GCM and
numpy's copies release the GIL, so threads scale; with 1 worker everything runs in the calling
thread. Order of results never depends on thread timing (snapshot.framewriter's output is
bit-identical whatever the number of threads)."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

MAX_DEFAULT_THREADS = 8  # ours: more threads than this stop paying off for 2 MiB frames
IN_FLIGHT_PER_THREAD = 4  # ours: frames queued per worker, bounding the memory held

T = TypeVar("T")
R = TypeVar("R")


def default_threads() -> int:
    """Workers used when none are given: the CPUs this process may run on, at most
    MAX_DEFAULT_THREADS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_THREADS))


class Workers:
    """A pool of `threads` workers (1: everything runs in the calling thread)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = default_threads() if threads is None else threads
        if type(self.threads) is not int or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self._pool = ThreadPoolExecutor(self.threads, "frames") if self.threads > 1 else None

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        """`fn(*args)` on a worker (inline with one thread: done on return)."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future[R] = Future()
        done.set_result(fn(*args))
        return done

    def ordered(self, fn: Callable[[T], R], items: Iterable[T], window: int | None = None) -> Iterator[R]:
        """fn(item) for each item, results in order, at most `window` (default
        IN_FLIGHT_PER_THREAD x threads) submitted and not yet consumed. The first exception is
        raised when its result is reached."""
        if self._pool is None:
            yield from map(fn, items)
            return
        todo = iter(items)
        ahead = IN_FLIGHT_PER_THREAD * self.threads if window is None else max(1, window)
        pending = deque(self._pool.submit(fn, item) for item in islice(todo, ahead))
        while pending:
            result = pending.popleft().result()
            pending.extend(self._pool.submit(fn, item) for item in islice(todo, 1))
            yield result

    def close(self) -> None:
        """Cancel what has not started and wait for what has (nothing touches RAM after)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
