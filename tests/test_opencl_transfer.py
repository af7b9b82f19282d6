"""Staged host->device copies (backends/opencl/transfer.py) on the copying path, forced on PoCL.

The device is opened with zero_copy=False (as a discrete GPU is) and given a Stager with tiny slots,
so that every input of a few hundred KiB goes through many chunks, more than there are slots (slot
reuse), with kernels launched chunk by chunk. Sums, means and variances are held to the bound of the
device's fold (tests/references.py, references.opencl_stages; chunk by chunk the loads per work-item
are at most the whole input's, which the bound assumes); min, max, count, histogram and integer sums
are exact; matmul takes tests/test_opencl_catalog.py's tolerance (1e-4 of |a| @ |b| for float32).
"""
from __future__ import annotations

import numpy as np
import pytest

from opencl_devices import usable_opencl_device

CL_DEVICE, _ = usable_opencl_device()

from lepton.errors import LeptonError  # noqa: E402
from lepton.backends.ops import REGISTRY, TensorMeta  # noqa: E402
from lepton.backends.opencl import OpenCLDevice, ProgramCache, transfer  # noqa: E402
from lepton.backends.opencl.transfer import Stager  # noqa: E402
from opencl_devices import opencl_stages  # noqa: E402
from references import assert_matches, close  # noqa: E402

SLOT = 64 << 10  # 64 KiB slots: a 1 MB input is 16 chunks through 2 slots


class CountingStager(Stager):
    """Counts chunks sent and reads staged, to see the staged paths taken."""
    fills = reads = 0

    def chunks(self, *args):
        for chunk in super().chunks(*args):
            self.fills += 1
            yield chunk

    def read(self, *args):
        self.reads += 1
        super().read(*args)


@pytest.fixture(scope="module")
def device():
    dev = OpenCLDevice(CL_DEVICE, "opencl:staged", cache=ProgramCache(), zero_copy=False, calibrate=False)
    dev.allocator.stager.close()
    dev.allocator.stager = CountingStager(dev.context, slots=2, slot_bytes=SLOT, min_bytes=16 << 10, threads=3)
    yield dev
    dev.close()


@pytest.fixture(autouse=True)
def small_fill_parts(monkeypatch):
    monkeypatch.setattr(transfer, "FILL_PART", 4096)  # several threads per chunk even in small slots


def run(dev, name, x, **params):
    op = REGISTRY[name]
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, params)
    return dev.run(op, {"x": x}, p), op.reference({"x": x}, p)


def make(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (1000 + 10 * rng.standard_normal(shape)).astype(dtype)


def check(name, x, got, ref):
    assert got.keys() == ref.keys()
    where = f"{name} {x.dtype} {x.shape}"
    for key in ref:
        g, r = np.asarray(got[key]), np.asarray(ref[key])
        assert g.dtype == r.dtype and g.shape == r.shape, (where, key)
        if name in ("min", "max", "count", "histogram") or key == "n" or (name == "sum" and x.dtype.kind == "i"):
            np.testing.assert_array_equal(g, r, err_msg=where)
            continue
    if name in ("sum", "mean", "var") and not (name == "sum" and x.dtype.kind == "i"):
        op = REGISTRY[name]
        p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
        assert_matches(name, x, op.finalize(got, p), opencl_stages(fp64=True))  # the staged device has fp64


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


OPS = ["sum", "min", "max", "count", "mean", "var"]
SHAPES = [(250_007,), (60_001, 4), (30_011, 3), (20_003, 2, 2)]  # odd lengths; lanes; per-column; 3-D


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_staged_reductions_match_numpy_and_repeat_bitwise(device, dtype, shape):
    x = make(dtype, shape)
    for name in OPS:
        before = device.allocator.stager.fills
        got, ref = run(device, name, x)
        on_host = name == "count" and dtype.startswith("int")  # integers have no NaN: the row count
        assert device.allocator.stager.fills - before > (-1 if on_host else 2), name  # in more chunks than slots
        check(name, x, got, ref)
        assert same_bits(got, run(device, name, x)[0]), f"{name} {dtype} {shape} differs between runs"


def test_float64_and_histograms(device):
    x = make("float64", (200_001,))
    for name in ("sum", "var"):
        check(name, x, *run(device, name, x))
    for y in (make("float32", (300_001,)), make("float64", (50_001, 3))):
        before = device.allocator.stager.fills
        got, ref = run(device, "histogram", y, bins=37, range=[990.0, 1010.0])
        assert device.allocator.stager.fills - before > 2
        check("histogram", y, got, ref)
        assert same_bits(got, run(device, "histogram", y, bins=37, range=[990.0, 1010.0])[0])


def test_non_contiguous_inputs(device):
    base = make("float32", (400_010, 4))
    # Strided rows, one column of a wider array, a Fortran-ordered array, an unaligned start: the
    # fill reads them in place (np.copyto), no contiguous copy first.
    for x in (base[::3], base[:, 1], np.asfortranarray(base[:90_001, :2]), base.reshape(-1)[5:300_004]):
        for name in ("sum", "max", "var", "histogram"):
            before = device.allocator.stager.fills
            got, ref = run(device, name, x, **({"bins": 10, "range": [985.0, 1015.0]} if name == "histogram" else {}))
            assert device.allocator.stager.fills - before > 2
            check(name, x, got, ref)


def test_small_inputs_take_the_plain_copy(device):
    x = make("float32", (1_001,))
    before = device.allocator.stager.fills
    check("sum", x, *run(device, "sum", x))
    assert device.allocator.stager.fills == before


def test_many_calls_reuse_slots_and_buffers(device):
    x = make("float32", (300_001,))
    first = run(device, "var", x)[0]
    buffers = {role: (id(b), b.size) for role, b in device.allocator.kept.items()}
    slots = [id(buffer) for buffer, _ in device.allocator.stager._slots]
    assert len(slots) == 2
    for i in range(30):
        name = ("var", "sum", "min")[i % 3]
        assert same_bits(run(device, name, x)[0], run(device, name, x)[0])
    assert same_bits(run(device, "var", x)[0], first)
    assert {role: (id(b), b.size) for role, b in device.allocator.kept.items()} == buffers  # no growth, no new buffers
    assert [id(buffer) for buffer, _ in device.allocator.stager._slots] == slots


def test_matmul_inputs_staged(device):
    from lepton.backends.opencl import catalog

    rng = np.random.default_rng(3)
    a = rng.standard_normal((301, 203)).astype(np.float32)
    b = rng.standard_normal((203, 157)).astype(np.float32)
    scale = np.abs(a).astype(np.float64) @ np.abs(b)
    before, reads = device.allocator.stager.fills, device.allocator.stager.reads
    c = catalog.gemm_host(device, a, b)
    assert device.allocator.stager.fills - before > 2 and device.allocator.stager.reads == reads + 1  # the output too
    close(c, a.astype(np.float64) @ b, scale=scale, rtol=1e-4)
    op = REGISTRY["matmul.rows"]
    p = op.validate({"a": TensorMeta(a.dtype, a.shape), "b": TensorMeta(b.dtype, b.shape)}, {})
    got = device.run(op, {"a": a, "b": b}, p)["c"]
    close(got, a.astype(np.float64) @ b, scale=scale, rtol=1e-4)
    assert got.tobytes() == device.run(op, {"a": a, "b": b}, p)["c"].tobytes()


def test_error_mid_copy_leaves_the_device_usable(device, monkeypatch):
    x = make("float32", (300_001,))
    calls = []

    def failing(dst, src):
        calls.append(1)
        if len(calls) == 4:
            raise MemoryError("host memory gone")
        np.copyto(dst, src)

    monkeypatch.setattr(device.allocator.stager, "_fill", failing)
    with pytest.raises(LeptonError, match="out of host memory"):
        run(device, "sum", x)
    monkeypatch.undo()
    check("sum", x, *run(device, "sum", x))


def test_close_releases_slots(cl_device=CL_DEVICE):
    dev = OpenCLDevice(cl_device, "opencl:closing", cache=ProgramCache(), zero_copy=False, calibrate=False)
    dev.allocator.stager = Stager(dev.context, slots=3, slot_bytes=SLOT, min_bytes=16 << 10)
    x = make("float32", (100_003,))
    check("sum", x, *run(dev, "sum", x))
    assert len(dev.allocator.stager._slots) == 3 and dev.allocator.stager._pool is not None
    dev.close()
    stager = dev.allocator.stager
    assert stager._slots == [] and stager._pool is None and stager.queue is None
    dev.close()  # twice: still no error


def test_zero_copy_devices_have_no_stager():
    dev = OpenCLDevice(CL_DEVICE, "opencl:shared", cache=ProgramCache(), zero_copy=True, calibrate=False)
    assert dev.allocator.stager is None
    dev.close()


def test_gpu_layout_staged():
    """The kernels a discrete GPU runs (work-group trees), chunk by chunk."""
    dev = OpenCLDevice(CL_DEVICE, "opencl:gpu-staged", cache=ProgramCache(), zero_copy=False, gpu_layout=True,
                       calibrate=False)
    dev.allocator.stager.close()
    dev.allocator.stager = CountingStager(dev.context, slots=3, slot_bytes=SLOT, min_bytes=16 << 10, threads=2)
    try:
        for x in (make("float32", (250_007,)), make("float32", (40_001, 4))):
            for name in ("sum", "min", "var", "histogram"):
                params = {"bins": 20, "range": [985.0, 1015.0]} if name == "histogram" else {}
                before = dev.allocator.stager.fills
                got, ref = run(dev, name, x, **params)
                assert dev.allocator.stager.fills - before > 3
                check(name, x, got, ref)
                assert same_bits(got, run(dev, name, x, **params)[0])
    finally:
        dev.close()


def test_write_and_read_round_trip(device):
    """Staged both ways, odd byte counts, more chunks than slots, after other staged work."""
    rng = np.random.default_rng(5)
    for shape, dtype in (((100_003,), np.uint8), ((7_001, 5), np.float64), ((3, 50_001), np.int32)):
        x = rng.integers(0, 100, size=shape).astype(dtype)
        buffer = device.allocator.buffer("round-trip", x.nbytes)
        reads = device.allocator.stager.reads
        device.allocator.copyin(buffer, x)
        back = device.allocator.copyout(buffer, shape, dtype)
        assert device.allocator.stager.reads == reads + 1
        assert back.tobytes() == x.tobytes()


class ReadyStager(CountingStager):
    """Also records whether reads waited on per-chunk kernel events (Stager.read's `ready`)."""
    ready_reads = 0

    def read(self, producer, buffer, out, rows, ready=None):
        self.ready_reads += bool(ready)
        super().read(producer, buffer, out, rows, ready)


@pytest.mark.parametrize("gpu_layout", [False, True], ids=["cpu-kernels", "gpu-kernels"])
def test_matmul_and_gram_stream_row_blocks_bitwise(gpu_layout):
    """matmul's rows of a and Gram's rows of x stream through the slots, each chunk's part of the grid
    launched as it lands (row blocks of C; K slices of XᵀX) and C's rows read back as their launch
    ends: bitwise the same as one launch after a plain copy (a device whose stager never engages),
    and within 1e-4 of |a| @ |b| of NumPy (tests/test_opencl_catalog.py's float32 tolerance)."""
    from lepton.backends.opencl import catalog

    kinds = dict(cache=ProgramCache(), zero_copy=False, gpu_layout=gpu_layout, calibrate=False)
    streamed = OpenCLDevice(CL_DEVICE, "opencl:streamed", **kinds)
    plain = OpenCLDevice(CL_DEVICE, "opencl:plain", **kinds)
    streamed.allocator.stager.close()
    streamed.allocator.stager = ReadyStager(streamed.context, slots=2, slot_bytes=512 << 10, min_bytes=16 << 10,
                                            threads=2)
    rng = np.random.default_rng(7)
    try:
        a, b = rng.standard_normal((3000, 100)).astype(np.float32), rng.standard_normal((100, 50)).astype(np.float32)
        x = rng.standard_normal((40_000, 8)).astype(np.float32)
        for got_args, want in [((a, b), a @ b), ((x, x, True), x.T @ x)]:
            stager = streamed.allocator.stager
            fills = stager.fills
            got = catalog.gemm_host(streamed, *got_args)
            assert stager.fills - fills >= 3  # streamed in chunks
            assert got.tobytes() == catalog.gemm_host(plain, *got_args).tobytes()
            scale = np.abs(got_args[0]).T @ np.abs(got_args[1]) if len(got_args) == 3 else np.abs(a) @ np.abs(b)
            close(got, want, scale, 1e-4)
        assert streamed.allocator.stager.ready_reads >= 1  # C (600 KB) came back chunk by chunk
    finally:
        streamed.close()
        plain.close()
