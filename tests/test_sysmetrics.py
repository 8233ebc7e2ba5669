"""System metrics sent with trial reports: the first report has them; reports faster than the sampling interval
carry them about once per interval instead of each paying for a sample."""

from __future__ import annotations

import time

from harness.run.sysmetrics import SystemSampler


def _check(got: dict[str, float]) -> None:
    assert 0 <= got["system/cpu_utilization_percentage"] <= 100
    assert got["system/system_memory_usage_megabytes"] > 0 and got["system/trial_memory_megabytes"] > 10


def test_first_take_samples_then_fast_takes_wait_for_the_interval():
    sampler = SystemSampler(interval_s=0.5)
    try:
        _check(sampler.take())
        assert sampler.take() == {}  # right after: nothing sampled since, and the last sample is recent
        time.sleep(0.6)
        _check(sampler.take())  # the thread has sampled (or this take does): metrics again
    finally:
        sampler.close()


def test_thread_samples_are_averaged_into_the_next_take():
    sampler = SystemSampler(interval_s=3600)  # the thread never samples during the test
    try:
        _check(sampler.take())
        sampler._sample()
        sampler._sample()
        _check(sampler.take())
    finally:
        sampler.close()
