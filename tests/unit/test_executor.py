import threading
import time

from clusterctl.transport.executor import run_parallel


def test_one_failing_host_does_not_stop_the_others():
    def work(name):
        if name == "bad":
            raise ConnectionError("boom")
        return name.upper()

    results = run_parallel(["a", "bad", "c"], work, workers=2)
    assert list(results) == ["a", "bad", "c"]
    assert results["a"].value == "A" and results["c"].value == "C"
    assert not results["bad"].ok and "ConnectionError: boom" == results["bad"].error


def test_a_hanging_host_times_out_and_the_rest_finish():
    release = threading.Event()

    def work(name):
        if name == "stuck":
            release.wait(30)
        return name

    t0 = time.monotonic()
    results = run_parallel(["stuck", "b", "c", "d"], work, workers=2, timeout=0.5)
    took = time.monotonic() - t0
    release.set()
    assert results["stuck"].timed_out and "timed out" in results["stuck"].error
    # The stuck worker is replaced, so the queue behind it still drains.
    assert all(results[k].value == k for k in "bcd")
    assert took < 5


def test_workers_bound_concurrency():
    running, peak, lock = 0, 0, threading.Lock()

    def work(name):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return name

    results = run_parallel([str(i) for i in range(20)], work, workers=4)
    assert len(results) == 20 and all(o.ok for o in results.values())
    assert peak <= 4


def test_progress_callback_sees_every_host():
    seen = []
    run_parallel(["x", "y"], lambda n: n, on_done=lambda k, o: seen.append((k, o.ok)))
    assert sorted(seen) == [("x", True), ("y", True)]
