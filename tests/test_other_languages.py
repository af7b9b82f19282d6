"""Clients in other languages (clients/node, clients/cpp) against a live cluster, checked with NumPy.

Each client's example generates x[i] = (i % 1000) / 7 as float32 for i < 1,000,000, runs sum, mean
and histogram(bins=10, range=[0, 150]) and a request the coordinator must reject, and prints the
results as JSON; here the same x is rebuilt with NumPy and every result is held to the bound of
Lepton's fold (tests/references.py). matmul (a 2x3 by a 3x2) runs too whenever the cluster offers it
(devices advertise its plans, "matmul.rows" and "matmul.inner"); otherwise the clients must say they
skipped it.

The test installs and builds what it needs (`npm ci`; CMake build cached in clients/cpp/build). If the
toolchain is missing or the npm registry cannot be reached, the test skips and says why; on CI
(CI=true, set by .ci/run, which installs both) that skip is a failure (tests/ci_policy.py).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from references import mismatch

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "clients" / "node"
CPP_DIR = ROOT / "clients" / "cpp"
CPP_BUILD = CPP_DIR / "build"
N = 1_000_000
APT = "apt-get install -y protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev pkg-config cmake make g++"
DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
          "uint8": np.uint8, "int8": np.int8, "int16": np.int16, "uint16": np.uint16, "uint32": np.uint32,
          "uint64": np.uint64, "bool": np.bool_}


@contextmanager
def locked(folder: Path):
    """Serialise installs and builds in `folder` between concurrent test runs (lock file outside the repo)."""
    name = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"lepton-build-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]


# -- builds ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_example() -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("Node.js client not tested: `node` and `npm` must be on PATH (Debian: apt-get install nodejs npm)")
    version = run([node, "--version"], NODE_DIR, 30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.skip(f"Node.js client not tested: needs Node.js >= 18, found {version}")
    lock, installed = NODE_DIR / "package-lock.json", NODE_DIR / "node_modules" / ".package-lock.json"
    with locked(NODE_DIR):
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            done = run([npm, "ci", "--no-audit", "--no-fund"], NODE_DIR, 300)
            if done.returncode != 0:
                pytest.skip(f"Node.js client not tested: `npm ci` failed in {NODE_DIR} (is the npm registry "
                            f"reachable?):\n{tail(done.stdout + done.stderr)}")
    return [node, str(NODE_DIR / "example.js")]


@pytest.fixture(scope="module")
def cpp_example() -> list[str]:
    missing = [tool for tool in ("cmake", "make", "pkg-config", "protoc", "grpc_cpp_plugin") if not shutil.which(tool)]
    if not (shutil.which("c++") or shutil.which("g++")):
        missing.append("a C++ compiler (g++)")
    if shutil.which("pkg-config") and run(["pkg-config", "--exists", "grpc++", "protobuf"], CPP_DIR, 30).returncode:
        missing.append("the grpc++ and protobuf development libraries (pkg-config grpc++ protobuf)")
    if missing:
        pytest.skip(f"C++ client not tested: missing {', '.join(missing)} (Debian: {APT})")
    with locked(CPP_DIR):
        cache = CPP_BUILD / "CMakeCache.txt"
        if cache.exists() and f"CMAKE_HOME_DIRECTORY:INTERNAL={CPP_DIR}\n" not in cache.read_text():
            shutil.rmtree(CPP_BUILD)  # configured from another checkout path
        if not cache.exists():
            # Build type None: no optimisation flags, so the generated code compiles about twice as fast
            # (~17 s of CPU instead of ~30 s); the example's speed is the network's either way.
            done = run(["cmake", "-S", str(CPP_DIR), "-B", str(CPP_BUILD), "-DCMAKE_BUILD_TYPE=None"], ROOT, 120)
            assert done.returncode == 0, f"cmake configure failed:\n{tail(done.stdout + done.stderr)}"
        done = run(["cmake", "--build", str(CPP_BUILD), "-j", str(os.cpu_count() or 2)], ROOT, 600)
        assert done.returncode == 0, f"C++ client build failed:\n{tail(done.stdout + done.stderr)}"
    return [str(CPP_BUILD / "lepton_example")]


# -- checks ------------------------------------------------------------------------------------
def arrays(results: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(t["data"], dtype=DTYPES[t["dtype"]]).reshape(t["shape"]) for name, t in results.items()}


def run_example(command: list[str], cluster, args: list[str] = ()) -> dict:
    """Run an example against the cluster; without args it finds the cluster's token in LEPTON_TOKEN."""
    env = {**os.environ, "LEPTON_TOKEN": cluster.token} if not args else None
    try:
        done = subprocess.run([*command, cluster.address, *args], capture_output=True, text=True, timeout=150,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command[-1]} still running after {exc.timeout}s:\n{exc.stderr}\n{exc.stdout}\n{cluster.logs()}")
    assert done.returncode == 0, f"{command[-1]} failed:\n{done.stderr}\n{done.stdout}\n{cluster.logs()}"
    return json.loads(done.stdout)


def check(out: dict, cluster) -> None:
    x = (np.arange(N) % 1000 / 7).astype(np.float32)
    assert out["n"] == N
    for op, params in [("sum", {}), ("mean", {}), ("histogram", {"bins": 10, "range": [0, 150]})]:
        got = arrays(out[op])
        problem = mismatch(op, x, got, **params)
        assert problem is None, f"{op}: {problem}"

    # A bad request ends the call with INVALID_ARGUMENT (3) and a message naming the missing field.
    assert out["bad_request"]["code"] == 3, out["bad_request"]
    assert "range" in out["bad_request"]["details"]

    ops = {op for agent in cluster.client(timeout=30).cluster_status().agents for d in agent.devices for op in d.ops}
    if any(op == "matmul" or op.startswith("matmul.") for op in ops):  # devices advertise its plans
        a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
        b = np.arange(7, 13, dtype=np.float32).reshape(3, 2)
        results = arrays(out["matmul"])
        assert sorted(results) == ["c"], f"matmul should give one tensor 'c'; got {sorted(results)}"
        assert results["c"].dtype == np.float32
        np.testing.assert_array_equal(results["c"], a @ b)  # small integers: exact
    else:
        assert "skipped" in out["matmul"], out["matmul"]


def test_node_client_matches_numpy(clusters, node_example):
    cluster = clusters[2]
    out = run_example(node_example, cluster)
    assert out["client"] == "node"
    check(out, cluster)


@pytest.mark.slow
def test_cpp_client_matches_numpy(clusters, cpp_example):
    cluster = clusters[2]
    out = run_example(cpp_example, cluster)
    assert out["client"] == "cpp"
    check(out, cluster)
