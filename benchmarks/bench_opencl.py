"""OpenCL reduction kernels beside NumPy on the same data (a benchmark, not a test).

    python benchmarks/bench_opencl.py                      # opencl:0, float32, 2^28 values
    python benchmarks/bench_opencl.py --device opencl:gpu --repeats 20 --torch

For each op it prints medians of --repeats runs and ratios against NumPy (GB/s of input bytes):
  e2e       device.run as an agent calls it: the caller's array in, the partial out, wall clock
            (includes the host->device copy on discrete GPUs; CPUs such as PoCL read in place)
  resident  the same launches with the input already in device memory, wall clock
  kernel    those launches' own time on the device clock (OpenCL profiling events)
  xfer      copying the input into device memory once: what e2e adds to resident on a GPU
--torch adds torch.sum on CUDA over the same values, timed with CUDA events (the H100 target).

    python benchmarks/bench_opencl.py --ops none --matmul 1024,2048          # SGEMM on PoCL
    python benchmarks/bench_opencl.py --device opencl:gpu --ops none --matmul 4096,8192 --torch

--matmul N,N,...: n^3 products (GFLOP/s, medians): NumPy's a @ b; the OpenCL GEMM as an agent runs
matmul.rows (e2e: host arrays in and out) and its kernel alone on the device clock; with --torch,
torch.matmul on CUDA in FP32 with TF32 off (CUDA events). --tiles 'TM,TN,TK,WM,WN[,PAD] ...' times
the kernel once per tile shape listed (tuning); a single VN for the CPU kernel.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lepton.backends import discovery
from lepton.backends.ops import REGISTRY, TensorMeta

NUMPY = {"sum": np.sum, "min": np.min, "max": np.max, "mean": np.mean, "var": np.var,
         "count": lambda x: np.count_nonzero(~np.isnan(x)) if x.dtype.kind == "f" else len(x),
         "histogram": lambda x: np.histogram(x, bins=100, range=(0.0, 1.0))}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: builds, page faults, caches
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def kernel_only(device, name: str, x: np.ndarray, resident):
    """The op's device launches on resident data (None where there is no resident form: histogram)."""
    from lepton.backends.opencl.reductions import reduce

    if name in ("sum", "min", "max", "count"):
        return lambda: reduce(device, name, x, resident=resident)
    if name == "mean":
        return lambda: reduce(device, "fsum", x, resident=resident)
    if name == "var":
        def var():
            total, _, lo, hi = reduce(device, "fsum", x, resident=resident)
            shift = (total / (hi - lo)).astype(np.float32 if x.dtype == np.float32 else np.float64)
            reduce(device, "m2", x, shift=shift, resident=resident)
        return var
    return None


def torch_sum(x: np.ndarray, repeats: int) -> float | None:
    """Median seconds of torch.sum on CUDA, on the device clock; None without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    t = torch.from_numpy(x).cuda()
    torch.sum(t)
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.sum(t)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples)


def kernel_seconds(device, fn, repeats: int) -> float:
    """Median over runs of the summed device-clock time of the kernels one call of fn launches."""
    fn()
    samples = []
    for _ in range(repeats):
        device.profile = []
        fn()
        samples.append(sum(e.profile.end - e.profile.start for e in device.profile) * 1e-9)
    device.profile = None
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="opencl:0", help="device spec (default opencl:0)")
    parser.add_argument("--log2", type=int, default=28, help="values per op: 2^N (default 28)")
    parser.add_argument("--histogram-log2", type=int, default=24, help="values for histogram (NumPy's is slow)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ops", default="sum,min,max,mean,var,count,histogram")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time torch.sum on CUDA")
    parser.add_argument("--matmul", default="", help="comma-separated n for n^3 matmuls (e.g. 1024,2048)")
    parser.add_argument("--matmul-dtype", default="float32")
    parser.add_argument("--tiles", default="", help="tile shapes to time, e.g. '128,128,16,8,8 128,128,8,8,8,4' (GPU) or 8 (CPU)")
    args = parser.parse_args()
    if args.ops == "none":
        args.ops = ""

    (device,) = discovery.open_devices([args.device])[:1]
    rng = np.random.default_rng(0)
    print(f"device: {device.name} = {device.description}")
    big = rng.random(1 << args.log2 if args.ops else 0, dtype=np.float32).astype(args.dtype, copy=False)
    if args.ops:
        print(f"data: {args.dtype}, 2^{args.log2} values ({big.nbytes / 2**30:.2f} GiB; histogram "
              f"2^{args.histogram_log2}), medians of {args.repeats} runs, GB/s of input")
    if args.ops:
        print(f"{'op':<10}{'numpy ms':>9}{'GB/s':>7}{'e2e ms':>9}{'GB/s':>7}{'vs np':>7}{'resid ms':>9}{'GB/s':>7}"
          f"{'kernel ms':>10}{'GB/s':>7}{'vs np':>7}{'xfer ms':>9}")
    transfer = {}
    for name in filter(None, args.ops.split(",")):
        x = big[: 1 << args.histogram_log2] if name == "histogram" else big
        op = REGISTRY[name]
        params = {"bins": 100, "range": [0.0, 1.0]} if name == "histogram" else {}
        p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, params)
        t_np = median_seconds(lambda: NUMPY[name](x), args.repeats)
        t_e2e = median_seconds(lambda: device.run(op, {"x": x}, p), args.repeats)
        with device._run_lock:  # resident data lives outside the agent's path
            if x.nbytes not in transfer:
                start = time.perf_counter()
                resident = device.allocator.upload(x, keep=True)
                device.queue.finish()
                transfer[x.nbytes] = (time.perf_counter() - start, resident)
            fn = kernel_only(device, name, x, transfer[x.nbytes][1]) or (lambda: device.run(op, {"x": x}, p))
            t_res = median_seconds(fn, args.repeats)
            t_k = kernel_seconds(device, fn, args.repeats)
        gbs = lambda t: x.nbytes / t / 1e9  # noqa: E731
        resident_cell = f"{t_res * 1e3:>9.2f}{gbs(t_res):>7.1f}" if name != "histogram" else f"{'-':>9}{'-':>7}"
        print(f"{name:<10}{t_np * 1e3:>9.2f}{gbs(t_np):>7.1f}{t_e2e * 1e3:>9.2f}{gbs(t_e2e):>7.1f}"
              f"{t_np / t_e2e:>6.2f}x{resident_cell}{t_k * 1e3:>10.2f}{gbs(t_k):>7.1f}{t_np / t_k:>6.2f}x"
              f"{transfer[x.nbytes][0] * 1e3:>9.1f}")
    if args.torch and "sum" in args.ops:
        t_torch = torch_sum(big, args.repeats)
        if t_torch is None:
            print("torch: not installed or no CUDA device")
        else:
            print(f"torch.sum on CUDA (device clock): {t_torch * 1e3:.3f} ms, {big.nbytes / t_torch / 1e9:.1f} GB/s")
    if args.matmul:
        bench_matmul(device, [int(n) for n in args.matmul.split(",")], np.dtype(args.matmul_dtype), args)
    device.close()


def torch_matmul(a: np.ndarray, b: np.ndarray, repeats: int) -> float | None:
    """Median seconds of torch.matmul on CUDA with TF32 off (true FP32), on the device clock."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    torch.matmul(ta, tb)
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(ta, tb)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples)


def parse_tiles(text: str) -> list:
    """'128,128,16,8,8 128,128,8,8,8,4' -> tile shapes (see catalog.TILES); a lone number: the CPU VN."""
    shapes = []
    for item in text.split():
        values = [int(v) for v in item.split(",")]
        shapes.append(values[0] if len(values) == 1 else tuple(values))
    return shapes


def bench_matmul(device, sizes: list[int], dtype: np.dtype, args) -> None:
    from lepton.backends.opencl import catalog

    default = catalog.gemm_config(device, catalog.CL[dtype])
    shapes = parse_tiles(args.tiles) or [default]
    op = REGISTRY["matmul.rows"]
    print(f"\nmatmul {dtype}, n^3, medians of {args.repeats} runs, GFLOP/s; kernel: on the device clock, "
          f"per tile shape (TM,TN,TK,WM,WN[,PAD]; default {default})")
    print(f"{'n':>6}{'numpy ms':>10}{'GF/s':>8}{'e2e ms':>10}{'GF/s':>8}{'torch ms':>10}{'GF/s':>8}")
    rng = np.random.default_rng(1)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype, copy=False)
        b = rng.standard_normal((n, n), dtype=np.float32).astype(dtype, copy=False)
        flop = 2.0 * n ** 3
        gf = lambda t: flop / t / 1e9  # noqa: E731
        p = op.validate({"a": TensorMeta(a.dtype, a.shape), "b": TensorMeta(b.dtype, b.shape)}, {})
        t_np = median_seconds(lambda: a @ b, max(1, min(args.repeats, 5)))
        t_e2e = median_seconds(lambda: device.run(op, {"a": a, "b": b}, p), args.repeats)
        t_torch = torch_matmul(a, b, args.repeats) if args.torch and dtype == np.float32 else None
        torch_cells = f"{t_torch * 1e3:>10.2f}{gf(t_torch):>8.0f}" if t_torch else f"{'-':>10}{'-':>8}"
        print(f"{n:>6}{t_np * 1e3:>10.1f}{gf(t_np):>8.1f}{t_e2e * 1e3:>10.1f}{gf(t_e2e):>8.1f}{torch_cells}")
        reference = a[:64].astype(np.float64) @ b
        bound = np.abs(a[:64]).astype(np.float64) @ np.abs(b)
        for tiles in shapes:
            try:
                with device._run_lock:
                    t_k = kernel_seconds(device, lambda: catalog.gemm_host(device, a, b, tiles=tiles), args.repeats)
                    c = catalog.gemm_host(device, a, b, tiles=tiles)
            except Exception as exc:  # a shape the device cannot build or launch: say so, go on
                print(f"{'':>6}  kernel {tiles}: failed: {str(exc).splitlines()[0][:120]}")
                continue
            check = np.max(np.abs(c[:64] - reference) / bound)
            vs_torch = f"{t_torch / t_k:>6.0%} of torch" if t_torch else ""
            print(f"{'':>6}  kernel {str(tiles):<34}{t_k * 1e3:>9.2f} ms{gf(t_k):>9.0f} GF/s{t_np / t_k:>7.1f}x np"
                  f" {vs_torch}  (max rel. error {check:.1e})", flush=True)

if __name__ == "__main__":
    main()
