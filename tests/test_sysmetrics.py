"""System metrics sent with trial reports: present even when reports come faster than the sampling interval."""

from __future__ import annotations

from harness.sysmetrics import SystemSampler


def test_every_take_has_cpu_and_memory_even_between_samples():
    sampler = SystemSampler(interval_s=3600)  # the thread never samples during the test
    try:
        for _ in range(2):
            got = sampler.take()
            assert 0 <= got["system/cpu_utilization_percentage"] <= 100
            assert got["system/system_memory_usage_megabytes"] > 0 and got["system/trial_memory_megabytes"] > 10
    finally:
        sampler.close()
