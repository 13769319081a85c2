"""Scheduling over world lanes: a world size's cases run in one world, one after another; each lane (a thread)
takes the next world size left and runs its cases in a world of its own."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable


def in_lanes(sizes: Iterable[int], run_size: Callable[[int, threading.Event], None], lanes: int,
             done_with: Callable[[int], None]) -> None:
    """Calls `run_size(size, stop)` for every world size, largest first (they take longest), in up to `lanes`
    threads at once, and `done_with(size)` after each. `stop` is set when a lane raises or this thread is
    interrupted: `run_size` starts no further case then. The first exception a lane raised is raised here
    once every lane is back."""
    left = deque(sorted(set(sizes), reverse=True))
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def next_size() -> int | None:
        with lock:
            return left.popleft() if left and not stop.is_set() else None

    def lane() -> None:
        while (size := next_size()) is not None:
            try:
                run_size(size, stop)
            except BaseException as exc:  # noqa: BLE001 - raised to the caller once every lane is back
                failures.append(exc)
                stop.set()
            finally:
                done_with(size)

    threads = [threading.Thread(target=lane, name=f"world-lane-{i}", daemon=True)
               for i in range(max(1, min(lanes, len(left))))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # in short waits, so that an interrupt reaches this thread
    except BaseException:
        stop.set()
        raise
    if failures:
        raise failures[0]
