"""A bounded parallel executor whose results are data.

Each host's work runs on a daemon worker thread; one host failing or hanging never stops the
others. A host whose work outlives its time limit is reported as timed out and abandoned (its
transport is closed by the caller), so a stuck host cannot keep the run or the process alive.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_WORKERS = 32


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What happened on one host: a value, or an error message (timed_out says which kind)."""

    value: T | None = None
    error: str | None = None
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_parallel(
    keys: Iterable[K],
    work: Callable[[K], T],
    *,
    workers: int = DEFAULT_WORKERS,
    timeout: float | None = None,
    on_done: Callable[[K, Outcome[T]], None] | None = None,
    explain: Callable[[BaseException], str] = describe,
) -> dict[K, Outcome[T]]:
    """Run work(key) for every key, at most `workers` at once; never raises for one key.

    `timeout` bounds each key's own run time, counted from when its work starts.
    `on_done` is called in the calling thread as each key finishes (for progress output).
    """
    todo = list(dict.fromkeys(keys))
    if not todo:
        return {}
    pending: queue.Queue[K] = queue.Queue()
    for k in todo:
        pending.put(k)
    done: queue.Queue[tuple[K, Outcome[T]]] = queue.Queue()
    started: dict[K, float] = {}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                key = pending.get_nowait()
            except queue.Empty:
                return
            t0 = time.monotonic()
            with lock:
                started[key] = t0
            try:
                outcome: Outcome[T] = Outcome(value=work(key), seconds=time.monotonic() - t0)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes data
                outcome = Outcome(error=explain(exc), seconds=time.monotonic() - t0)
            done.put((key, outcome))

    for _ in range(min(workers, len(todo))):
        threading.Thread(target=worker, daemon=True, name="clusterctl-worker").start()

    results: dict[K, Outcome[T]] = {}

    def finish(key: K, outcome: Outcome[T]) -> None:
        results[key] = outcome
        if on_done:
            on_done(key, outcome)

    while len(results) < len(todo):
        wait = 0.5
        if timeout is not None:
            now = time.monotonic()
            with lock:
                running = [(k, t) for k, t in started.items() if k not in results]
            for key, t0 in running:
                if now - t0 >= timeout:
                    finish(key, Outcome(error=f"timed out after {timeout:g}s", timed_out=True, seconds=now - t0))
                    # Its thread stays stuck; give the queue a fresh worker in its place.
                    if not pending.empty():
                        threading.Thread(target=worker, daemon=True, name="clusterctl-worker").start()
            deadlines = [t0 + timeout - now for k, t0 in running if k not in results]
            if deadlines:
                wait = max(0.0, min(min(deadlines), wait))
        if len(results) >= len(todo):
            break
        try:
            key, outcome = done.get(timeout=wait)
        except queue.Empty:
            continue
        if key not in results:  # a late answer from a host already reported as timed out is dropped
            finish(key, outcome)
    return {k: results[k] for k in todo}
