"""The device's own figures, the ceilings the kernels are measured against (a benchmark, not a test).

    python benchmarks/gpu_facts.py --device opencl:gpu        # benchmarks/gpu_check.sh runs this
    python benchmarks/gpu_facts.py --device opencl:0 --mib 256 # PoCL: the OpenCL half only

Medians of --repeats runs, on the device clock (OpenCL profiling events, CUDA events):
  memory bandwidth   a float4 copy kernel and clEnqueueCopyBuffer over --mib MiB (bytes read + written)
  pinned DMA         host<->device copies from an ALLOC_HOST_PTR buffer (the PCIe rate; wall clock)
and with torch on CUDA (when installed): a device-to-device copy, torch.sum of 2^28 float32 values,
cuBLAS SGEMM (torch.matmul, TF32 off) at 4096^3 and 8192^3, and pinned host->device copies.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench_opencl_catalog import cuda_time  # torch's CUDA events, median of repeats

COPY_KERNEL = """
__kernel void copy4(__global const float4* restrict src, __global float4* restrict dst) {
    const size_t i = get_global_id(0);
    dst[i] = src[i];
}
"""


def opencl_facts(spec: str, nbytes: int, repeats: int) -> None:
    import pyopencl as cl

    from lepton.backends import discovery

    (device,) = discovery.open_devices([spec])[:1]
    ctx, queue = device.context, device.queue
    print(f"OpenCL device: {device.description}")
    src, dst = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, nbytes), cl.Buffer(ctx, cl.mem_flags.READ_WRITE, nbytes)
    cl.enqueue_fill_buffer(queue, src, np.float32(1), 0, nbytes)
    program = cl.Program(ctx, COPY_KERNEL).build()
    kernel = program.copy4

    def device_clock(launch) -> float:
        launch().wait()
        samples = []
        for _ in range(repeats):
            event = launch()
            event.wait()
            samples.append((event.profile.end - event.profile.start) * 1e-9)
        return statistics.median(samples)

    local = 256 if device.is_gpu else None
    t_kernel = device_clock(lambda: kernel(queue, (nbytes // 16,), (local,) if local else None, src, dst))
    t_copy = device_clock(lambda: cl.enqueue_copy(queue, dst, src, byte_count=nbytes))
    print(f"  memory bandwidth, float4 copy kernel: {2 * nbytes / t_kernel / 1e9:8.1f} GB/s "
          f"({nbytes >> 20} MiB in {t_kernel * 1e3:.3f} ms, read + written)")
    print(f"  memory bandwidth, clEnqueueCopyBuffer: {2 * nbytes / t_copy / 1e9:7.1f} GB/s")
    if not device.allocator.zero_copy:
        pinned = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR, nbytes)
        host, _ = cl.enqueue_map_buffer(queue, pinned, cl.map_flags.WRITE | cl.map_flags.READ, 0, (nbytes,), np.uint8)
        for name, copy in (("host->device", lambda: cl.enqueue_copy(queue, src, host, is_blocking=True)),
                           ("device->host", lambda: cl.enqueue_copy(queue, host, src, is_blocking=True))):
            copy()
            samples = []
            for _ in range(max(3, repeats // 4)):
                start = time.perf_counter()
                copy()
                samples.append(time.perf_counter() - start)
            print(f"  pinned DMA {name}: {nbytes / statistics.median(samples) / 1e9:6.1f} GB/s")
        host.base.release(queue)
        pinned.release()
    src.release()
    dst.release()
    device.close()


def torch_facts(nbytes: int, repeats: int) -> None:
    try:
        import torch
    except ImportError:
        print("torch: not installed")
        return
    if not torch.cuda.is_available():
        print("torch: no CUDA device")
        return
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    x, y = torch.empty(nbytes // 4, device="cuda"), torch.empty(nbytes // 4, device="cuda")
    x.fill_(1)
    t = cuda_time(lambda: y.copy_(x), repeats)
    print(f"  memory bandwidth, device copy: {2 * nbytes / t / 1e9:8.1f} GB/s ({nbytes >> 20} MiB, read + written)")
    values = torch.rand(1 << 28, device="cuda")
    t = cuda_time(lambda: torch.sum(values), repeats)
    print(f"  torch.sum of 2^28 float32: {t * 1e3:.3f} ms, {values.numel() * 4 / t / 1e9:.1f} GB/s")
    del values
    torch.backends.cuda.matmul.allow_tf32 = False
    for n in (4096, 8192):
        a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
        t = cuda_time(lambda: a @ b, max(5, repeats // 2))
        print(f"  cuBLAS SGEMM {n}^3 (TF32 off): {t * 1e3:.2f} ms, {2 * n ** 3 / t / 1e12:.1f} TFLOP/s")
    host = torch.empty(nbytes // 4, pin_memory=True)
    t = cuda_time(lambda: x.copy_(host, non_blocking=True), max(3, repeats // 4))
    print(f"  pinned host->device (torch): {nbytes / t / 1e9:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="opencl:gpu")
    parser.add_argument("--mib", type=int, default=2048, help="bytes copied, in MiB (default 2 GiB: many times L2)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--torch", action="store_true", help="also measure torch on CUDA")
    args = parser.parse_args()
    opencl_facts(args.device, args.mib << 20, args.repeats)
    if args.torch:
        torch_facts(args.mib << 20, args.repeats)


if __name__ == "__main__":
    main()
