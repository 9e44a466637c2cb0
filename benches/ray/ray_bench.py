"""Ray's own `ray microbenchmark`, with what rayx's benchmark adds measured the
same way for Ray:

- after each metric's line, the CPU time per operation of every Ray process
  (the driver and all its descendants: GCS, raylet, workers, agents), from
  psutil, over the 4 timed runs: `NAME per second MEAN +- SD cpu X us/op`;
- `cpu: idle runtime`, `cpu: one actor call every 5 ms`, `cpu: one task every
  5 ms` (CPU at idle and under light traffic);
- `scale: 100000 tasks queued behind busy workers, then got`: every CPU busy in a
  0.5 s task, then 100,000 no-op tasks submitted and all got.

Ray's metrics run unchanged (its `ray_perf.main`); only its `timeit` is wrapped
to add the CPU reading, keeping its method (10 s sleep, 1 s warm-up, 4 runs of
2 s, mean and population sd). CPU of a process that exits during a run is not
counted (Ray's workers live through a metric).

    python ray_bench.py            # from the venv that has ray==2.60.0
"""
import os
import sys
import threading
import time

import numpy as np
import psutil

import ray
import ray._private.ray_perf as ray_perf

RUN = os.environ.get("TESTS_TO_RUN", "")
SKIP = os.environ.get("TESTS_TO_SKIP", "")


def selected(name):
    return (not RUN or RUN in name) and not (SKIP and SKIP in name)


def ray_processes():
    me = psutil.Process()
    return [me] + me.children(recursive=True)


def ray_cpu():
    """CPU seconds (user + system) of the driver and every process under it."""
    total = 0.0
    for p in ray_processes():
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def ray_rss():
    total = 0
    for p in ray_processes():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def timeit(name, fn, multiplier=1, warmup_time_sec=10):
    """Ray's timeit method, plus the CPU per operation over the timed runs."""
    if not selected(name):
        return [None]
    time.sleep(warmup_time_sec)
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < 1:
        fn()
        count += 1
    step = count // 10 + 1
    stats = []
    ops = 0.0
    cpu0 = ray_cpu()
    for _ in range(4):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < 2:
            for _ in range(step):
                fn()
            count += step
        stats.append(multiplier * count / (time.perf_counter() - start))
        ops += multiplier * count
    cpu_us = (ray_cpu() - cpu0) * 1e6 / ops
    mean, sd = np.mean(stats), np.std(stats)
    print(name, "per second", round(mean, 2), "+-", round(sd, 2), "cpu", round(cpu_us, 4), "us/op")
    sys.stdout.flush()
    return [(name, mean, sd)]


@ray.remote
def small_value():
    return b"ok"


@ray.remote
def sleep_ms(ms):
    time.sleep(ms / 1000)


@ray.remote
class Actor:
    def small_value(self):
        return b"ok"


def extras():
    ray.init()
    a = Actor.remote()
    ray.get(a.small_value.remote())
    ray.get(small_value.remote())
    time.sleep(10)  # as Ray's timeit: let start-up settle

    window = 3.0
    name = "cpu: idle runtime"
    if selected(name):
        c0 = ray_cpu()
        time.sleep(window)
        print(f"{name}: {(ray_cpu() - c0) * 1e6 / window:.1f} us of CPU per second")

    def paced(name, op):
        if not selected(name):
            return
        every = 0.005
        n = int(window / every)
        c0, t0 = ray_cpu(), time.perf_counter()
        for i in range(1, n + 1):
            op()
            rest = t0 + every * i - time.perf_counter()
            if rest > 0:
                time.sleep(rest)
        print(f"{name}: {(ray_cpu() - c0) * 1e6 / n:.1f} us of CPU per call")

    paced("cpu: one actor call every 5 ms", lambda: ray.get(a.small_value.remote()))
    paced("cpu: one task every 5 ms", lambda: ray.get(small_value.remote()))

    queued = 100_000
    name = f"scale: {queued} tasks queued behind busy workers, then got"
    if selected(name):
        base = ray_rss()
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.wait(0.05):
                peak[0] = max(peak[0], ray_rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        busy = [sleep_ms.remote(500) for _ in range(int(ray.cluster_resources()["CPU"]))]
        refs = [small_value.remote() for _ in range(queued)]
        submitted = time.perf_counter() - start
        values = ray.get(refs)
        total = time.perf_counter() - start
        ray.get(busy)
        done.set()
        sampler.join()
        assert len(values) == queued
        print(
            f"{name}: {total:.2f} s (submitted in {submitted:.2f} s); "
            f"peak RSS of Ray's processes {(peak[0] - base) / 2**20:.0f} MiB above the start "
            f"(sampled every 50 ms)"
        )
    ray.shutdown()


if __name__ == "__main__":
    ray_perf.timeit = timeit
    ray_perf.main()
    extras()
