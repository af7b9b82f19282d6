"""On CI (CI=true), a skip is a failure: CI installs every part the tests need (Node.js, the C++
toolchain, grpcurl, locust, PoCL, MPICH), so a test that skips there hides a missing part.

The one exception is a test marked `beyond_ci(reason)`: it needs what no package can install (a
kernel feature), and may skip, saying why. None is marked today: the netem test of
tests/test_faults.py falls back to iptables loss and a delaying TCP relay where the kernel lacks
the qdisc.

GPU tests (marker `gpu`) are deselected unless the `-m` expression names gpu: CI has no GPU, and
benchmarks/gpu_check.sh runs them with `-m gpu` where there is one.
"""
from __future__ import annotations

import os

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pytest_collection_modifyitems(config, items):
    if "gpu" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def _fail_skip(report, item=None) -> None:
    if item is not None and item.get_closest_marker("beyond_ci"):
        return
    if ON_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped on CI (CI=true), where every part it needs is installed: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_skip((yield).get_result(), item)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # module-level skips
    _fail_skip((yield).get_result())
