"""Shared fixtures: real clusters (coordinator and agents as processes on loopback)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# PoCL's own kernel cache served stale binaries once (ARCHITECTURE.md §8): one fresh cache per test run.
_CACHE = tempfile.mkdtemp(prefix="lepton-test-cache-")
os.environ.setdefault("POCL_CACHE_DIR", os.path.join(_CACHE, "pocl"))
os.environ.setdefault("LEPTON_OPENCL_CACHE", os.path.join(_CACHE, "opencl"))

import lepton  # noqa: E402

pytest_plugins = ["ci_policy"]  # CI=true: a skip fails (tests/ci_policy.py)


@pytest.fixture(scope="session")
def clusters():
    """Clusters of 1, 2 and 3 NumPy agents, started once per session and shared: clusters[n]."""
    started: dict[int, lepton.LocalCluster] = {}

    class Lazy(dict):
        def __missing__(self, n):
            cluster = lepton.LocalCluster(agents=n)
            cluster.start()
            started[n] = cluster
            self[n] = cluster
            return cluster

    yield Lazy()
    for cluster in started.values():
        cluster.close()


@pytest.fixture(scope="session")
def client(clusters):
    return clusters[2].client(timeout=120)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
