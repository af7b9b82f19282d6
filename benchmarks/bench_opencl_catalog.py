"""The op catalog's OpenCL kernels on one device beside NumPy/SciPy and torch on CUDA (a benchmark).

    python benchmarks/bench_opencl_catalog.py                              # PoCL, a tenth of the sizes
    python benchmarks/bench_opencl_catalog.py --device opencl:gpu --full --torch

Each op runs on one partition holding the whole input, as an agent calls the device:
  e2e     device.run: host arrays in, the partial out (wall clock; includes host<->device copies)
  kernel  the device-clock time of the launches in that call (OpenCL profiling events)
  host    NumPy, or SciPy for the CSR product, on the same data
  torch   with --torch, on CUDA with the data already on the GPU (CUDA events): torch.matmul with TF32
          off, torch.sparse.mm on a CSR tensor (cuSPARSE), torch._int_mm (int8 x int8 -> int32), and
          the k-means step and Gram matrix written in torch
  bound   on devices with memory of their own: max(kernel, the op's bytes in and out at the pinned DMA
          rates measured first), the floor e2e can reach by overlapping copies with compute (e2e/bound:
          issue 17's target is 1.3 for matmul and Gram)
Medians of --repeats runs. Full sizes: matmul 4096^3; SpMM on a 1M-node, 16M-edge power-law graph x 64
features; k-means 4M x 16, k=64, one step (float32 distances); Gram of 8M x 32; qmatmul 8192 x 4096 @
4096 x 4096 once per int8 product the device can run (catalog.INT8_DOTS: khr, ptx, char4, int32), and
the int8 GEMM alone (int8_matmul_host: packing and the product) beside torch._int_mm alone.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lepton.backends import discovery
from lepton.backends.ops import REGISTRY, TensorMeta
from bench_catalog import power_law_csr, reference_spmm
from bench_opencl import kernel_seconds, median_seconds


def device_call(name: str, inputs: dict, **params):
    """(op, arrays, params) for one partition covering everything, as the coordinator prepares it."""
    op = REGISTRY[name]
    meta = {k: TensorMeta(v.dtype, v.shape) for k, v in inputs.items()}
    op = op.resolve(meta, params)
    p = op.validate(meta, params)
    arrays = {**{k: inputs[k] for k in op.split_inputs if k in inputs}, **op.prepare(inputs, p)}
    if op.needs_row_offset:
        p = {**p, "row_offset": 0}
    return op, arrays, p


def cuda_time(fn, repeats: int) -> float:
    import torch

    fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return statistics.median(samples)


def torch_versions(case: dict):
    """A closure per op running it in torch on CUDA, data moved to the GPU beforehand."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    cuda = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()  # noqa: E731
    name, inputs = case["name"], case["inputs"]
    if name == "matmul":
        a, b = cuda(inputs["a"]), cuda(inputs["b"])
        return "torch.matmul", lambda: a @ b
    if name == "spmm":
        indptr, indices, data = (cuda(inputs[k].astype(np.int64) if k != "a_data" else inputs[k])
                                 for k in ("a_indptr", "a_indices", "a_data"))
        x = cuda(inputs["x"])
        a = torch.sparse_csr_tensor(indptr, indices, data, size=(len(inputs["a_indptr"]) - 1, x.shape[0]))
        return "torch.sparse.mm (cuSPARSE)", lambda: torch.sparse.mm(a, x)
    if name == "kmeans":
        x, c = cuda(inputs["x"]), cuda(inputs["centroids"].astype(np.float32))

        def step():
            d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
            labels = d.argmin(1)
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            return sums, torch.bincount(labels, minlength=len(c))
        return "torch (float32)", step
    if name == "gram":
        x = cuda(inputs["x"])
        return "torch x.T @ x", lambda: x.T @ x
    if name == "int8":
        a, w = cuda(inputs["a"]), cuda(inputs["w"])
        return "torch._int_mm (int8 GEMM alone)", lambda: torch._int_mm(a, w)
    if name == "qmatmul":
        w = inputs["w"]
        scale = np.abs(w).max(axis=0) / 127
        wq = cuda(np.clip(np.rint(w / scale), -127, 127).astype(np.int8))
        x = cuda(inputs["x"])

        def int8():
            xs = x.abs().amax(1, keepdim=True) / 127
            xq = torch.round(x / xs).clamp(-127, 127).to(torch.int8)
            return torch._int_mm(xq, wq)
        return "torch._int_mm (quantize + int8 GEMM)", int8
    return None


def cases(scale: float, rng) -> list[dict]:
    n = max(256, int(4096 * scale ** (1 / 3)) // 64 * 64)
    nodes, edges = int(1_000_000 * scale), int(16_000_000 * scale)
    indptr, indices, data = power_law_csr(nodes, edges, rng)
    x = rng.standard_normal((nodes, 64), dtype=np.float32)
    points = rng.standard_normal((int(4_000_000 * scale), 16), dtype=np.float32)
    g = rng.standard_normal((int(8_000_000 * scale), 32), dtype=np.float32)
    qm, qk = max(256, int(8192 * scale ** 0.5) // 64 * 64), max(256, int(4096 * scale ** 0.5) // 64 * 64)
    xq, w = rng.standard_normal((qm, qk), dtype=np.float32), rng.standard_normal((qk, qk), dtype=np.float32)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    aq, wq = rng.integers(-127, 128, (qm, qk)).astype(np.int8), rng.integers(-127, 128, (qk, qk)).astype(np.int8)
    aqf, wqf = aq.astype(np.float32), wq.astype(np.float32)  # NumPy's integer matmul has no BLAS: minutes
    spmm_host = reference_spmm(indptr, indices, data, x, nodes)
    return [
        dict(name="matmul", label=f"matmul {n}^3 f32", inputs={"a": a, "b": b}, params={"plan": "rows"},
             host=("numpy", lambda: a @ b), flop=2.0 * n ** 3),
        dict(name="spmm", label=f"spmm {nodes} nodes {len(indices)} edges x64",
             inputs={"a_indptr": indptr, "a_indices": indices, "a_data": data, "x": x},
             params={"a_cols": nodes}, host=spmm_host, flop=2.0 * len(indices) * 64),
        dict(name="kmeans", label=f"kmeans {len(points)}x16 k=64, 1 step",
             inputs={"x": points, "centroids": points[:64].astype(np.float64)}, params={"max_iter": 1},
             host=("numpy", lambda: kmeans_step(points, points[:64])), flop=None),
        dict(name="gram", label=f"gram {len(g)}x32 f32", inputs={"x": g}, params={},
             host=("numpy", lambda: g.T @ g), flop=2.0 * len(g) * 32 * 32),
        dict(name="qmatmul", label=f"qmatmul {qm}x{qk} @ {qk}x{qk} int8", inputs={"x": xq, "w": w}, params={},
             host=("numpy f32", lambda: xq @ w), flop=2.0 * qm * qk * qk, variants=True),
        dict(name="int8", label=f"int8 GEMM {qm}x{qk} @ {qk}x{qk}", inputs={"a": aq, "w": wq}, params=None,
             host=("numpy f32 BLAS on the int8 values", lambda: aqf @ wqf), flop=2.0 * qm * qk * qk,
             variants=True),
    ]


def kmeans_step(points, centroids):
    from lepton.backends.ops.kmeans import assign

    labels, _ = assign(points, centroids)
    sums = np.zeros((len(centroids), points.shape[1]))
    np.add.at(sums, labels, points)
    return sums, np.bincount(labels, minlength=len(centroids))


def int8_variants(device) -> list[str]:
    """The int8 products this device can run (catalog.int8_dots), to time each."""
    from lepton.backends.opencl import catalog

    return catalog.int8_dots(device.cl_device, device.is_gpu)


def dma_rates(device, nbytes: int = 256 << 20) -> tuple[float, float] | None:
    """(host->device, device->host) bytes per second of pinned DMA (an ALLOC_HOST_PTR buffer, mapped),
    medians of 5; None on devices that share host memory (they copy nothing)."""
    import pyopencl as cl

    if device.allocator.zero_copy:
        return None
    ctx, queue = device.context, device.queue
    pinned = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR, nbytes)
    host, _ = cl.enqueue_map_buffer(queue, pinned, cl.map_flags.WRITE | cl.map_flags.READ, 0, (nbytes,), np.uint8)
    host[:] = 1
    dev = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, nbytes)
    rates = []
    for direction in ("in", "out"):
        samples = []
        for _ in range(6):
            start = time.perf_counter()
            if direction == "in":
                cl.enqueue_copy(queue, dev, host, is_blocking=True)
            else:
                cl.enqueue_copy(queue, host, dev, is_blocking=True)
            samples.append(time.perf_counter() - start)
        rates.append(nbytes / statistics.median(samples[1:]))
    host.base.release(queue)
    pinned.release()
    dev.release()
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="opencl:0")
    parser.add_argument("--full", action="store_true", help="the issue's sizes (default: a tenth)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time torch on CUDA")
    parser.add_argument("--ops", default="matmul,spmm,kmeans,gram,qmatmul,int8")
    args = parser.parse_args()
    (device,) = discovery.open_devices([args.device])[:1]
    print(f"device: {device.name} = {device.description}; medians of {args.repeats} runs")
    rates = dma_rates(device)
    if rates:
        print(f"pinned DMA: host->device {rates[0] / 1e9:.1f} GB/s, device->host {rates[1] / 1e9:.1f} GB/s")
    print(f"{'op':<52}{'host':>10}{'e2e':>10}{'kernel':>10}{'torch':>10}  (ms; kernel vs host, torch vs kernel)")
    wanted = args.ops.split(",")
    runs = [(case, v) for case in cases(1.0 if args.full else 0.1, np.random.default_rng(0))
            if case["name"] in wanted for v in (int8_variants(device) if case.get("variants") else [None])]
    for case, variant in runs:
        label = case["label"] + (f" [{variant}]" if variant else "")
        try:
            if variant:
                device.int8_dot = variant
            if case["name"] == "int8":
                from lepton.backends.opencl import catalog

                a, w = case["inputs"]["a"], case["inputs"]["w"]
                call = lambda: catalog.int8_matmul_host(device, a, w)  # noqa: E731
                moved = (a.nbytes + w.nbytes, a.shape[0] * w.shape[1] * 4)
            else:
                op, arrays, p = device_call(case["name"], case["inputs"], **case["params"])
                call = lambda: device.run(op, arrays, p)  # noqa: E731
                out = call()
                moved = (sum(v.nbytes for v in arrays.values()), sum(np.asarray(v).nbytes for v in out.values()))
            t_e2e = median_seconds(call, args.repeats)
            with device._run_lock:
                t_k = kernel_seconds(device, call, args.repeats)
            if variant and device.int8_dot != variant:
                label += f" -> {device.int8_dot} (the driver refused {variant})"
        except Exception as exc:  # report and go on: one op's failure must not hide the others
            print(f"{label:<52} failed: {str(exc).splitlines()[0][:160]}", flush=True)
            continue
        which, host = case["host"]
        if "t_host" not in case:  # once per case, not per int8 product
            case["t_host"] = median_seconds(host, max(1, min(args.repeats, 3)))
        t_host = case["t_host"]
        t_torch, torch_label = None, ""
        if args.torch and "torch" not in case:  # once per case
            try:
                torch_label, fn = torch_versions(case)
                t_torch = cuda_time(fn, args.repeats)
            except Exception as exc:
                torch_label = f"torch failed: {str(exc).splitlines()[0][:100]}"
            case["torch"] = (t_torch, torch_label)
        if args.torch:
            t_torch, torch_label = case["torch"]
        rate = f", {case['flop'] / t_k / 1e9:.0f} GFLOP/s" if case["flop"] else ""
        torch_cell = f"{t_torch * 1e3:>10.2f}" if t_torch else f"{'-':>10}"
        ratios = f"{t_host / t_k:.1f}x {which}" + (f", torch {t_k / t_torch:.2f}x faster ({torch_label})"
                                                   if t_torch else f" {torch_label}")
        if rates:
            copies = moved[0] / rates[0] + moved[1] / rates[1]
            bound = f", e2e {t_e2e / max(t_k, copies):.2f}x bound (copies {copies * 1e3:.2f} ms at the DMA rates)"
        else:
            bound = ""
        print(f"{label:<52}{t_host * 1e3:>10.1f}{t_e2e * 1e3:>10.1f}{t_k * 1e3:>10.2f}{torch_cell}  "
              f"{ratios}{rate}{bound}", flush=True)
    device.close()


if __name__ == "__main__":
    main()
