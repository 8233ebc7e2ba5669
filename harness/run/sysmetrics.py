"""System metrics of a trial process, sent with its reports so the driver stays MLflow's only writer.

CPU and memory (psutil, under MLflow's metric names) and, on GPU machines, MLflow's GPU monitor (``nvidia-ml-py``)
are sampled on a background thread every few seconds; each report carries their means since the previous report
under MLflow's ``system/`` names, which the MLflow UI shows in a run's system-metrics tab, plus the trial's own
resident memory (its process and children). ``mlflow.start_run(log_system_metrics=True)`` would log the same from
each trial process itself, which would make every worker a writer to the (possibly SQLite) store.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class CPUMemoryMonitor:
    """MLflow's CPU monitor, on psutil directly (what MLflow's wraps), with its metric names and its interface:
    importing mlflow in every trial process would slow each trial's start (results/bench/README.md)."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = {}

    def collect_metrics(self) -> None:
        import psutil

        mem = psutil.virtual_memory()
        for k, v in (("cpu_utilization_percentage", psutil.cpu_percent()),
                     ("system_memory_usage_megabytes", mem.used / 1e6),
                     ("system_memory_usage_percentage", mem.used / mem.total * 100)):
            self.metrics.setdefault(k, []).append(v)

    def aggregate_metrics(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v), 1) for k, v in self.metrics.items() if v}

    def clear_metrics(self) -> None:
        self.metrics.clear()


class SystemSampler:
    def __init__(self, interval_s: float = 5.0) -> None:
        import psutil

        self._monitors: list[Any] = [CPUMemoryMonitor()]
        if _has_cuda():  # MLflow's GPU monitor (nvidia-ml-py) only where there is a GPU to watch
            try:
                from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

                self._monitors.append(GPUMonitor())
            except (ImportError, RuntimeError):  # no nvidia-ml-py: CPU metrics only
                pass
        self._proc = psutil.Process()
        self._rss: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval_s
        self._sample()  # psutil.cpu_percent's first call only sets its reference point
        for m in self._monitors:
            m.clear_metrics()
        self._rss.clear()
        self._last_sample = -float("inf")  # the first take samples
        self._thread = threading.Thread(target=self._run, name="harness-system-metrics", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with self._lock:
            self._last_sample = time.monotonic()
            for m in self._monitors:
                m.collect_metrics()
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                self._rss.append(sum(p.memory_info().rss for p in procs) / 1e6)
            except Exception:  # noqa: BLE001 - a child may exit between listing and reading it
                pass

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def take(self) -> dict[str, float]:
        """Means since the last call, as ``system/<name>``. With no sample since the last call, one is taken here
        only if the last is older than the interval: reports faster than that carry system metrics about once per
        interval, instead of costing every report a sample taken on the training thread."""
        if not self._rss and time.monotonic() - self._last_sample >= self._interval:
            self._sample()
        with self._lock:
            out: dict[str, float] = {}
            for m in self._monitors:
                if any(m.metrics.values()):
                    out.update({f"system/{k}": float(v) for k, v in m.aggregate_metrics().items()})
                m.clear_metrics()
            if self._rss:
                out["system/trial_memory_megabytes"] = round(sum(self._rss) / len(self._rss), 1)
            self._rss.clear()
        return out

    def close(self) -> None:
        self._stop.set()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
