#!/usr/bin/env bash
# The OpenCL tests and every kernel benchmark on a machine with an NVIDIA GPU, beside torch, in one run.
#
#   benchmarks/gpu_check.sh              # from the repository root or anywhere
#   benchmarks/gpu_check.sh --dry-run    # anywhere: the setup steps and the device list, then the
#                                        # commands it would run, printed, not run (no GPU needed)
#
# On the lent GPU machine (no package registry; python3 has torch and numpy, not pyopencl): run
# benchmarks/gpu_wheels.sh here first, carry .whl, and run this script there; when `import pyopencl`
# or `import lepton` fails it installs .whl/*.whl and Lepton from the working tree into a private
# directory on PYTHONPATH.
#
# Containers often ship NVIDIA's OpenCL driver (libnvidia-opencl.so.1, e.g. under
# /usr/local/nvidia/lib64) without registering it with the ICD loader (no
# /etc/OpenCL/vendors/nvidia.icd): then OpenCL sees only PoCL. This script registers it first
# (in /etc when writable, else in a private vendors directory named by OCL_ICD_VENDORS), checks that
# a GPU device shows up, then runs, in this order (each part's failure is reported and the rest go on):
#   tests    the OpenCL tests against the GPU (LEPTON_TEST_OPENCL_DEVICE=gpu), the `gpu` marker's too,
#            and the catalog through an OpenCL cluster
#   facts    benchmarks/gpu_facts.py: memory bandwidth by a device copy kernel, pinned DMA rates,
#            torch's device copy, torch.sum and cuBLAS SGEMM
#   bench    benchmarks/bench_opencl.py: the reductions beside torch.sum; SGEMM at 4096^3 and 8192^3
#            beside cuBLAS, once per tile shape in TILES (a sweep)
#   catalog  benchmarks/bench_opencl_catalog.py --full --torch: matmul, SpMM, k-means, Gram, qmatmul
#            once per int8 product (khr / ptx / char4 / int32), the int8 GEMM beside torch._int_mm
#   hetero   benchmarks/bench_hetero.py --gpu: one job over NumPy, PoCL, MPI and the GPU at once,
#            placement by measured speed against the old one
# Environment: PYTHON (default .venv/bin/python, else python3); PARTS (default "tests facts bench
# catalog hetero": a rerun can take fewer); BENCH_ARGS and CATALOG_ARGS: extra flags for the two benchmarks
# (HETERO_ARGS for bench_hetero.py);
# TILES: SGEMM tile shapes (TM,TN,TK,WM,WN[,PAD]) to sweep, "" for the default shape alone.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PARTS=${PARTS:-tests facts bench catalog hetero}
TILES=${TILES-128,128,8,8,8 128,128,16,8,8 128,128,8,8,8,4 128,256,8,8,16 256,128,8,16,8}
started=$SECONDS

say() { echo "gpu_check: $*"; }
part() { [[ " $PARTS " == *" $1 "* ]]; }
status=0
step() {  # run a GPU command (print it only, with --dry-run); a failure is remembered, not fatal
    echo "+ $*"
    [ "$DRY" = 1 ] && return 0
    local t0=$SECONDS
    "$@" || { local rc=$?; say "FAILED ($rc): $*"; status=1; }
    say "$(( SECONDS - t0 )) s for: $1 ${2:-} ${3:-}"
}

# -- Python packages: the machine's python3 plus carried wheels ---------------------------------------
if ! "$PYTHON" -c "import pyopencl, lepton" 2>/dev/null; then
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        site=$(mktemp -d)/site
        wheels=$(ls .whl/*.whl | grep -v '/lepton-' || true)
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $wheels
        if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
                --target "$site" . 2>/dev/null; then
            say "could not install Lepton from the working tree; trying .whl/lepton-*.whl (it may be older)"
            "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/lepton-*.whl
        fi
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        say "installed $(echo $wheels | wc -w) carried wheels and Lepton into $site"
    else
        say "$PYTHON cannot import pyopencl and lepton, and there is no .whl/ (run benchmarks/gpu_wheels.sh where pip works)" >&2
        [ "$DRY" = 1 ] || exit 1
    fi
fi

# -- the NVIDIA OpenCL driver -------------------------------------------------------------------------
driver=""
for candidate in /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 \
                 /usr/lib64/libnvidia-opencl.so.1 /usr/lib/libnvidia-opencl.so.1; do
    if [ -e "$candidate" ]; then driver=$candidate; break; fi
done
if [ -z "$driver" ]; then
    say "no libnvidia-opencl.so.1 found; is this an NVIDIA machine with the driver mounted?" >&2
elif grep -qs libnvidia-opencl /etc/OpenCL/vendors/*.icd; then
    say "NVIDIA OpenCL driver already registered"
else
    if mkdir -p /etc/OpenCL/vendors 2>/dev/null && echo "$driver" > /etc/OpenCL/vendors/nvidia.icd 2>/dev/null; then
        say "registered $driver in /etc/OpenCL/vendors/nvidia.icd"
    else
        vendors=$(mktemp -d)
        echo "$driver" > "$vendors/nvidia.icd"
        export OCL_ICD_VENDORS=$vendors   # pyopencl's loader still finds its bundled PoCL
        say "/etc is read-only; registered $driver via OCL_ICD_VENDORS=$vendors"
    fi
fi
# The driver's own dependencies (libcuda and friends) live beside it.
if [ -n "$driver" ]; then export LD_LIBRARY_PATH="$(dirname "$driver")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
# Fresh caches: PoCL's and ours, so nothing stale from another machine or version is used.
cache=$(mktemp -d)
export LEPTON_OPENCL_CACHE=$cache/opencl POCL_CACHE_DIR=$cache/pocl
export PYTHONUNBUFFERED=1

if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; fi
DRY=$DRY "$PYTHON" - <<'EOF'
import os, sys
from lepton.backends.opencl import catalog, describe_devices, all_devices
devices = describe_devices()
for d, cl_device in zip(devices, all_devices()):
    gpu = "gpu" in d["type"]
    dots = ",".join(catalog.int8_dots(cl_device, gpu)) if d["usable"] else "-"
    print(f"opencl:{d['index']}  {d['type']:<12} {d['name']}  ({d['platform']}, driver {d['driver_version']}, "
          f"{d['compute_units']} CUs, {d['global_memory_bytes'] / 2**30:.1f} GiB, OpenCL {d['opencl_version']}; "
          f"int8 products: {dots}; usable: {d['usable']} {d['reason']})")
    if gpu:
        dot_ext = [e for e in cl_device.extensions.split() if "dot_product" in e]
        print(f"    dot-product extensions: {dot_ext or 'none'}")
if not any("gpu" in d["type"] for d in devices) and os.environ["DRY"] != "1":
    sys.exit("gpu_check: no GPU OpenCL device; see the registration messages above")
EOF

GPU=(env LEPTON_TEST_OPENCL_DEVICE=gpu)
if part tests; then
    # -m "gpu or not gpu": every test of these files, the GPU-only ones (tests/test_gpu.py) included.
    step "${GPU[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider -m "gpu or not gpu" tests/test_opencl_device.py \
        tests/test_opencl_cluster.py tests/test_opencl_catalog.py tests/test_opencl_transfer.py tests/test_gpu.py
    step "${GPU[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_catalog.py -k opencl
fi
if part facts; then
    step "$PYTHON" benchmarks/gpu_facts.py --device opencl:gpu --torch
fi
if part bench; then
    step "$PYTHON" benchmarks/bench_opencl.py --device opencl:gpu --repeats 20 --torch --matmul 4096,8192 \
        ${TILES:+--tiles "$TILES"} ${BENCH_ARGS:-}
fi
if part catalog; then
    step "$PYTHON" benchmarks/bench_opencl_catalog.py --device opencl:gpu --full --torch ${CATALOG_ARGS:-}
fi
if part hetero; then
    step "$PYTHON" benchmarks/bench_hetero.py --gpu --cases kinds ${HETERO_ARGS:-}
fi
say "done in $(( SECONDS - started )) s, status $status"
exit $status
