"""The OpenCL device, kernel by kernel, against the NumPy reference (PoCL here and in CI).

Tolerances, and why: sums, means and variances are held to the error bound of the device's own fold
(tests/references.py's one checker, with references.opencl_stages: BLOCK=256 loads per lane in a
float32 inner accumulator for float32 data, then float64, or float32 without fp64). On this module's
data (1000 + 10 N(0, 1), 300 007 rows) that is 3e-7 of sum(|x|) for float32 sums (a third of it the
result's float32 ulp; 2e-6 without fp64), against the 1e-5 this module allowed before; integer
sums, min, max, count and histogram counts are exact.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from opencl_devices import opencl_stages, usable_opencl_device
from references import assert_matches, numpy_stages

# The device under test: a usable CPU device unless benchmarks/gpu_check.sh asks for the GPU.
CL_DEVICE, SPEC = usable_opencl_device()  # SPEC: its opencl:I in device specs

import pyopencl as cl  # noqa: E402

from lepton.backends import discovery  # noqa: E402
from lepton.errors import FailedPrecondition, InvalidInput, LeptonError, ResourceExhausted  # noqa: E402
from lepton.backends.numpy_device import NumpyDevice  # noqa: E402
from lepton.backends.ops import REGISTRY, TensorMeta  # noqa: E402
from lepton.backends.opencl import (OpenCLDevice, ProgramCache, describe_devices,  # noqa: E402
                             export_binaries, read_manifest)
from lepton.backends.opencl import reductions, variants  # noqa: E402
from lepton.backends.opencl.errors import cl_errors, translate  # noqa: E402

DTYPES = ["float32", "float64", "int32", "int64"]


@pytest.fixture(scope="module")
def cache():
    """The run's program cache ($LEPTON_OPENCL_CACHE): each variant compiles once per test run."""
    return ProgramCache()


@pytest.fixture(scope="module")
def cl_device():
    return CL_DEVICE


@pytest.fixture(scope="module")
def device(cl_device, cache):
    dev = OpenCLDevice(cl_device, "opencl:0", cache=cache)
    yield dev
    dev.close()


def make(dtype: str, shape: tuple, seed: int = 0, nan: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        info = np.iinfo(dtype)
        # int32: the full range (sums need int64); int64: large values (sums wrap like NumPy's).
        x = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        x = (1000 + 10 * rng.standard_normal(shape)).astype(dtype)  # an offset mean tests var's stability
        if nan:
            x.reshape(-1)[:: max(1, x.size // 5)] = np.nan
    return x


def run(dev, name: str, x: np.ndarray, **params):
    op = REGISTRY[name]
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, params)
    return dev.run(op, {"x": x}, p), op.reference({"x": x}, p)


EXACT = {"min", "max", "count", "histogram"}


def check(name: str, x: np.ndarray, got: dict, ref: dict, device=None) -> None:
    """Same keys, types, dtypes and shapes as the reference; results within the bound of `device`'s
    fold (tests/references.py; the deepest fold any device could have when not given)."""
    assert got.keys() == ref.keys()
    for key in ref:
        g, r = got[key], ref[key]
        assert type(g) is type(r), (key, type(g), type(r))
        assert np.asarray(g).dtype == np.asarray(r).dtype and np.shape(g) == np.shape(r), (key, g, r)
    where = f"{name} {x.dtype} {x.shape}"
    if name in EXACT or (name == "sum" and x.dtype.kind == "i"):
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=where)
        return
    if "n" in ref:
        assert got["n"] == ref["n"], where
    op = REGISTRY[name]
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
    stages = opencl_stages(device) if device is not None else opencl_stages(fp64=True)
    assert_matches(name, x, op.finalize(got, p), stages)


SHAPES = [
    (300_007,),      # several work-items, a tail of rows the vector loads leave to the host
    (40_000, 4),     # columns that divide the vector width: lanes map to columns
    (9_001, 3),      # columns that do not: the per-column kernel
    (5,),            # smaller than one vector load: all on the host
]


# Per-column kernels for float32 and int64 only: each (op, dtype, layout) is one more build.
CASES = [(shape, dtype) for shape in SHAPES for dtype in DTYPES
         if not (shape[1:] == (3,) and dtype in ("float64", "int32"))]


@pytest.mark.parametrize("name", ["sum", "min", "max", "count", "mean", "var"])
@pytest.mark.parametrize("shape, dtype", CASES, ids=str)
def test_reductions_match_numpy(device, name, dtype, shape):
    x = make(dtype, shape)
    check(name, x, *run(device, name, x), device)


def test_unaligned_views_and_nd_inputs(device):
    base = make("float32", (300_100,))
    # 1-D from an unaligned start (in place from the first aligned row); rows that never align (copied);
    # and 3-D input (columns 2 x 2 folded from vector lanes).
    for x in (base[3:], base[1:300_001].reshape(-1, 4), make("float32", (3_001, 2, 2))):
        for name in ("sum", "min", "var"):
            check(name, x, *run(device, name, x), device)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_propagates_like_numpy(device, dtype):
    x = make(dtype, (200_003,), nan=True)
    for name in ("sum", "min", "max", "count", "mean"):
        got, ref = run(device, name, x)
        check(name, x, got, ref, device)
    assert np.isnan(run(device, "min", x)[0]["min"]) and run(device, "count", x)[0]["count"] == np.sum(~np.isnan(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_histogram_matches_numpy(device, dtype):
    x = make(dtype, (100_003,), nan=True) if dtype.startswith("f") else \
        np.random.default_rng(1).integers(-50, 50, 100_003).astype(dtype)
    lo, hi = (980.0, 1020.0) if dtype.startswith("f") else (-40.0, 40.0)
    for params in (dict(bins=16, range=[lo, hi]), dict(bins=1000, range=[lo + 0.1, hi - 0.3]),
                   dict(edges=[lo, lo + 1, (lo + hi) / 2, hi - 2.5, hi])):
        check("histogram", x, *run(device, "histogram", x, **params), device)
    x2 = x[: 30_000].reshape(-1, 3)
    check("histogram", x2, *run(device, "histogram", x2, bins=7, range=[lo, hi]), device)


def test_histogram_bin_edges_exactly_as_numpy(device):
    # Values on and one ulp around every edge, where arithmetic bin guesses go wrong.
    edges = np.linspace(np.float32(0.1), np.float32(0.7), 13, dtype=np.float32)
    near = np.concatenate([edges, np.nextafter(edges, np.float32(-1)), np.nextafter(edges, np.float32(2))])
    x = np.tile(near, 2000).astype(np.float32)
    check("histogram", x, *run(device, "histogram", x, bins=12, range=[0.1, 0.7]), device)


def test_partials_combine_with_numpy_devices(device):
    """An OpenCL partial and a NumPy one combine within the bound of both folds together."""
    x = make("float32", (250_000,))
    numpy_dev = NumpyDevice()
    both = lambda op, a: opencl_stages(device)(op, a) + numpy_stages(op, a)  # noqa: E731
    for name in ("sum", "var", "histogram"):
        op = REGISTRY[name]
        params = {"bins": 10, "range": [990, 1010]} if name == "histogram" else {}
        p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, params)
        left = device.run(op, {"x": x[:100_001]}, p)
        right = numpy_dev.run(op, {"x": x[100_001:]}, p)
        assert_matches(name, x, op.finalize(op.combine(left, right), p), both, **params)


def _gpu_layout_device(cl_device, cache):
    # The GPU kernels (grid-stride loads, local-memory tree), run here where no GPU is. PoCL takes
    # about a second to generate each barrier kernel, so the quick test builds two.
    return OpenCLDevice(cl_device, "opencl:gpu-layout", cache=cache, gpu_layout=True, calibrate=False)


def test_gpu_layout_runs_on_pocl(cl_device, cache):
    dev = _gpu_layout_device(cl_device, cache)
    try:
        for x in (make("float32", (300_007,), nan=True), make("float32", (50_001, 2))):
            for name in ("sum", "max"):
                check(name, x, *run(dev, name, x), dev)
    finally:
        dev.close()


@pytest.mark.slow
def test_gpu_layout_all_ops_on_pocl(cl_device, cache):
    dev = _gpu_layout_device(cl_device, cache)
    try:
        for dtype in ("float32", "int64"):
            for x in (make(dtype, (300_007,)), make(dtype, (50_001, 4))):
                for name in ("sum", "min", "count", "mean", "var"):
                    check(name, x, *run(dev, name, x), dev)
        x = make("float32", (100_003,), nan=True)
        check("histogram", x, *run(dev, "histogram", x, bins=10, range=[990, 1010]), dev)
    finally:
        dev.close()


def test_without_fp64_float32_stays_on_device_and_float64_goes_to_host(cl_device, cache):
    dev = OpenCLDevice(cl_device, "opencl:fp32", cache=cache, fp64=False, calibrate=False)
    try:
        for name in ("sum", "mean", "var"):
            x = make("float32", (300_007,))
            check(name, x, *run(dev, name, x), dev)
            x64 = make("float64", (1000,))
            check(name, x64, *run(dev, name, x64), dev)
        assert all("double" not in v and "HAS_FP64" not in variants.options(v) for v in dev.programs)
    finally:
        dev.close()


def test_copy_path_reuses_and_grows_buffers(cl_device, cache):
    dev = OpenCLDevice(cl_device, "opencl:copy", cache=cache, zero_copy=False, calibrate=False)
    try:
        x = make("float32", (100_000,))
        check("sum", x, *run(dev, "sum", x), dev)
        first = dev.allocator.kept["x"]
        check("var", x[:90_000], *run(dev, "var", x[:90_000]), dev)
        assert dev.allocator.kept["x"] is first  # kept between calls
        y = make("float32", (300_000,))
        check("sum", y, *run(dev, "sum", y), dev)
        assert dev.allocator.kept["x"].size >= y.nbytes
    finally:
        dev.close()


def test_concurrent_runs_on_one_device(device):
    xs = [make("float32", (200_000 + i,), seed=i) for i in range(8)]
    results = [None] * len(xs)

    def work(i):
        results[i] = run(device, "sum", xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, (got, ref) in zip(xs, results):
        check("sum", x, got, ref, device)


# -- program cache -----------------------------------------------------------------------------------

def test_cache_hit_skips_compilation(cl_device, tmp_path):
    cold = ProgramCache(tmp_path)
    dev = OpenCLDevice(cl_device, "opencl:0", cache=cold, calibrate=False)
    variant = reductions.variant(dev, "max", np.float32, "flat")
    dev.program(variant)
    assert cold.stats["compiled"] == 1 and cold.stats["loaded"] == 0

    warm = ProgramCache(tmp_path)  # a new process would start like this
    dev = OpenCLDevice(cl_device, "opencl:0", cache=warm, calibrate=False)
    dev.program(variant)
    dev.program(variant)  # in memory from now on
    assert warm.stats["compiled"] == 0 and warm.stats["loaded"] == 1  # how fast: benchmarks/bench_opencl.py
    x = make("float32", (50_000,))
    check("max", x, *run(dev, "max", x), dev)


def test_cache_keys_and_corrupt_entries(cl_device, tmp_path):
    cache = ProgramCache(tmp_path)
    assert cache.key(cl_device, "a", "-DX") != cache.key(cl_device, "b", "-DX") != cache.key(cl_device, "a", "-DY")
    dev = OpenCLDevice(cl_device, "opencl:0", cache=cache, calibrate=False)
    variant = reductions.variant(dev, "min", np.int32, "flat")
    dev.program(variant)
    (entry,) = tmp_path.glob("*.bin")
    entry.write_bytes(entry.read_bytes()[:100])  # torn write: must not reach the driver (PoCL crashes)
    fresh = ProgramCache(tmp_path)
    OpenCLDevice(cl_device, "opencl:0", cache=fresh, calibrate=False).program(variant)
    assert fresh.stats["stale"] == 1 and fresh.stats["compiled"] == 1


def test_cache_entry_the_driver_refuses_is_rebuilt(cl_device, tmp_path):
    cache = ProgramCache(tmp_path)
    dev = OpenCLDevice(cl_device, "opencl:0", cache=cache, calibrate=False)
    variant = reductions.variant(dev, "max", np.int64, "flat")
    dev.program(variant)
    (entry,) = tmp_path.glob("*.bin")
    garbage = b"not a program binary" * 50  # intact as the cache sees it (its sha256 matches), refused by the driver
    entry.write_bytes(hashlib.sha256(garbage).digest() + garbage)
    fresh = ProgramCache(tmp_path)
    again = OpenCLDevice(cl_device, "opencl:0", cache=fresh, calibrate=False)
    again.program(variant)
    assert fresh.stats["stale"] == 1 and fresh.stats["compiled"] == 1
    assert entry.read_bytes()[32:] == again.program(variant).binary  # overwritten with the rebuilt binary
    x = make("int64", (50_000,))
    check("max", x, *run(again, "max", x), again)


def test_calibration_fills_throughput(cl_device, cache):
    uncalibrated = OpenCLDevice(cl_device, "opencl:0", cache=cache, calibrate=False)
    assert "sum" not in uncalibrated.info().throughput
    uncalibrated.close()
    dev = OpenCLDevice(cl_device, "opencl:0", cache=cache, calibrate=True)
    assert dev.info().throughput["sum"] > 0  # measured at start; its speed is benchmarks/bench_opencl.py's
    assert dev.info().ops == ["count", "gcn_layer", "gram", "histogram", "kmeans", "linear", "lstsq", "matmul.inner",
                              "matmul.rows", "max", "mean", "min", "mlp", "pca", "qmatmul", "spmm", "sum", "topk",
                              "var"]
    dev.close()


# -- errors ------------------------------------------------------------------------------------------

def test_build_failure_is_failed_precondition_with_log(cl_device, tmp_path):
    dev = OpenCLDevice(cl_device, "opencl:0", cache=ProgramCache(tmp_path), calibrate=False)
    with pytest.raises(FailedPrecondition) as info:
        dev.compiler.compile("reduce.cl", "-DOP_SUM -DVEC=16 -DT=no_such_type -w")
    assert "no_such_type" in str(info.value)  # the compiler's log is in the message


def test_oversized_partition_is_resource_exhausted(cl_device, cache):
    dev = OpenCLDevice(cl_device, "opencl:0", cache=cache, zero_copy=False, calibrate=False)
    dev.allocator.max_alloc = 1 << 16
    with pytest.raises(ResourceExhausted):
        run(dev, "sum", make("float32", (100_000,)))


def test_opencl_errors_map_to_lepton_errors():
    def error(kind, code):
        return kind(cl._cl._ErrorRecord(msg="test", code=code, routine="clTest"))

    for code in (cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE, cl.status_code.OUT_OF_RESOURCES):
        assert isinstance(translate(error(cl.MemoryError, code), "testing"), ResourceExhausted)
    assert isinstance(translate(error(cl.RuntimeError, cl.status_code.BUILD_PROGRAM_FAILURE), "x"), FailedPrecondition)
    with pytest.raises(LeptonError):
        with cl_errors("testing"):
            raise error(cl.LogicError, cl.status_code.INVALID_KERNEL_ARGS)


# -- discovery ---------------------------------------------------------------------------------------

def test_describe_and_specs(monkeypatch, tmp_path):
    monkeypatch.setenv("LEPTON_OPENCL_CACHE", str(tmp_path))
    listing = describe_devices()
    assert {"index", "platform", "name", "type", "compute_units", "global_memory_bytes",
            "driver_version", "usable", "reason"} <= listing[0].keys()
    usable_cpus = [d for d in listing if d["usable"] and "cpu" in d["type"]]
    # Names follow the order devices are opened in: SPEC first, then every usable CPU device.
    devices = discovery.open_devices(["numpy", SPEC, "opencl:cpu"])
    try:
        assert [d.name for d in devices] == ["numpy:0", "opencl:0", *[f"opencl:{1 + i}" for i in range(len(usable_cpus))]]
        assert all(d.info().throughput for d in devices[1:])
    finally:
        for d in devices:
            d.close()
    with pytest.raises(InvalidInput):
        discovery.open_devices([f"opencl:{len(listing)}"])
    with pytest.raises(InvalidInput):
        discovery.open_devices(["opencl:no-such-device"])


# -- prebuilt binaries (the FPGA path) --------------------------------------------------------------

def float32_variants(dev):
    """The programs of the float32 reductions (1-D: the flat layout) and histogram on `dev`."""
    return [reductions.variant(dev, p, np.float32, "flat") for p in ("sum", "m2", "min", "max", "count")] + \
        [reductions.variant(dev, "histogram", np.float32, "float")]


@pytest.fixture(scope="module")
def manifest(device, tmp_path_factory):
    return export_binaries(device, float32_variants(device), tmp_path_factory.mktemp("binaries"))


def test_binaries_load_in_a_fresh_process_without_compiling(manifest, tmp_path):
    script = textwrap.dedent(f"""
        import json, numpy as np
        from lepton.backends import discovery
        from lepton.backends.ops import REGISTRY, TensorMeta
        (dev,) = discovery.open_devices(["{SPEC}@{manifest}"])
        x = (1000 + 10 * np.random.default_rng(0).standard_normal(300_007)).astype(np.float32)
        out = {{}}
        for name in dev.info().ops:
            op = REGISTRY[name]
            params = {{"bins": 10, "range": [990, 1010]}} if name == "histogram" else {{}}
            p = op.validate({{"x": TensorMeta(x.dtype, x.shape)}}, params)
            got, ref = dev.run(op, {{"x": x}}, p), op.reference({{"x": x}}, p)
            out[name] = {{k: [float(np.max(np.abs(np.asarray(got[k], float) - np.asarray(ref[k], float)))),
                             float(np.max(np.abs(np.asarray(ref[k], float))))] for k in ref}}
        print(json.dumps({{"ops": dev.info().ops, "stats": dict(dev.cache.stats), "errors": out,
                          "throughput": dev.info().throughput}}))
    """)
    env = {**os.environ, "LEPTON_OPENCL_CACHE": str(tmp_path / "empty-cache"),
           "POCL_CACHE_DIR": str(tmp_path / "empty-pocl-cache")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ops"] == ["count", "histogram", "max", "mean", "min", "sum", "var"]
    assert report["stats"].get("compiled", 0) == 0 and report["stats"].get("loaded", 0) == 0
    assert report["throughput"]["sum"] > 0
    abs_sum = 300_007 * 1000
    for name, keys in report["errors"].items():
        for key, (err, scale) in keys.items():
            bound = 0 if name in ("min", "max", "count", "histogram") else 1e-5 * (abs_sum if key == "sum" else scale)
            assert err <= bound, (name, key, err)


def test_binary_only_device_refuses_other_variants(cl_device, manifest):
    dev = OpenCLDevice(cl_device, "opencl:0", binaries=read_manifest(manifest), calibrate=False)
    x = make("float64", (100_000,))
    with pytest.raises(FailedPrecondition, match="prebuilt"):
        run(dev, "sum", x)
    assert dev.cache.stats["compiled"] == 0


def test_corrupt_binary_is_refused_at_open(device, manifest, tmp_path):
    entries = json.loads(manifest.read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    for entry in entries["programs"].values():
        (broken / entry["file"]).write_bytes((manifest.parent / entry["file"]).read_bytes())
    sum_variant = reductions.variant(device, "sum", np.float32, "flat")
    victim = broken / entries["programs"][sum_variant]["file"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    (broken / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(FailedPrecondition, match="corrupt"):
        discovery.open_devices([f"{SPEC}@{broken / 'manifest.json'}"])

    # Bytes the manifest vouches for but the driver rejects: refused by the driver, still a clear error.
    victim.write_bytes(b"not a program binary" * 50)
    entries["programs"][sum_variant]["sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    (broken / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(FailedPrecondition, match=re.escape(sum_variant)):
        discovery.open_devices([f"{SPEC}@{broken / 'manifest.json'}"])
    with pytest.raises(FailedPrecondition, match="cannot read"):
        discovery.open_devices([f"{SPEC}@{tmp_path / 'missing.json'}"])


def test_the_bound_rejects_a_device_sum_short_of_one_row(device):
    """The device's bound can fail: a float32 sum missing one row of 300 007 (3e-6 of sum(|x|), which
    the old 1e-5 * sum(|x|) let through) is rejected, as is a mean off by as much."""
    x = make("float32", (300_007,))
    got, ref = run(device, "sum", x)
    check("sum", x, got, ref, device)
    with pytest.raises(AssertionError, match="exceeds the fold's bound"):
        check("sum", x, {"sum": np.asarray(got["sum"] - x[0])}, ref, device)
    got, ref = run(device, "mean", x)
    with pytest.raises(AssertionError, match="exceeds the fold's bound"):
        check("mean", x, {"n": got["n"], "sum": np.asarray(got["sum"] - x[0])}, ref, device)
