#!/usr/bin/env bash
# The OpenCL tests and kernel benchmarks on a machine with an NVIDIA GPU.
#
#   benchmarks/gpu_check.sh            # from the repository root or anywhere
#
# Containers often ship NVIDIA's OpenCL driver (libnvidia-opencl.so.1, e.g. under
# /usr/local/nvidia/lib64) without registering it with the ICD loader (no
# /etc/OpenCL/vendors/nvidia.icd): then OpenCL sees only PoCL. This script registers it first
# (in /etc when writable, else in a private vendors directory named by OCL_ICD_VENDORS), checks that
# a GPU device shows up, runs the OpenCL tests against it (LEPTON_TEST_OPENCL_DEVICE=gpu), then the
# benchmarks: the reductions and SGEMM (bench_opencl.py) and the op catalog (bench_opencl_catalog.py),
# with torch on CUDA beside them when it is installed, and a heterogeneous job over NumPy, PoCL, MPI and
# the GPU (bench_hetero.py --gpu).
# Environment: PYTHON (default .venv/bin/python, else python3); BENCH_ARGS and CATALOG_ARGS: extra flags
# for the two benchmarks (HETERO_ARGS for bench_hetero.py); TILES: SGEMM tile shapes to time, e.g. TILES="128,128,16,8,8 128,128,8,8,8,4".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

driver=""
for candidate in /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 \
                 /usr/lib64/libnvidia-opencl.so.1 /usr/lib/libnvidia-opencl.so.1; do
    if [ -e "$candidate" ]; then driver=$candidate; break; fi
done
if [ -z "$driver" ]; then
    echo "gpu_check: no libnvidia-opencl.so.1 found; is this an NVIDIA machine with the driver mounted?" >&2
elif grep -qs libnvidia-opencl /etc/OpenCL/vendors/*.icd; then
    echo "gpu_check: NVIDIA OpenCL driver already registered"
else
    if mkdir -p /etc/OpenCL/vendors 2>/dev/null && echo "$driver" > /etc/OpenCL/vendors/nvidia.icd 2>/dev/null; then
        echo "gpu_check: registered $driver in /etc/OpenCL/vendors/nvidia.icd"
    else
        vendors=$(mktemp -d)
        echo "$driver" > "$vendors/nvidia.icd"
        export OCL_ICD_VENDORS=$vendors   # pyopencl's loader still finds its bundled PoCL
        echo "gpu_check: /etc is read-only; registered $driver via OCL_ICD_VENDORS=$vendors"
    fi
fi
# The driver's own dependencies (libcuda and friends) live beside it.
[ -n "$driver" ] && export LD_LIBRARY_PATH="$(dirname "$driver")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Fresh caches: PoCL's and ours, so nothing stale from another machine or version is used.
cache=$(mktemp -d)
export LEPTON_OPENCL_CACHE=$cache/opencl POCL_CACHE_DIR=$cache/pocl

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" - <<'EOF'
import sys
from lepton.backends.opencl import describe_devices
devices = describe_devices()
for d in devices:
    print(f"opencl:{d['index']}  {d['type']:<12} {d['name']}  ({d['platform']}, driver {d['driver_version']}, "
          f"{d['compute_units']} CUs, {d['global_memory_bytes'] / 2**30:.1f} GiB)")
if not any("gpu" in d["type"] for d in devices):
    sys.exit("gpu_check: no GPU OpenCL device; see the registration messages above")
EOF

status=0
LEPTON_TEST_OPENCL_DEVICE=gpu "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_opencl_device.py tests/test_opencl_cluster.py tests/test_opencl_catalog.py || status=$?
# The GPU-only tests (marker gpu; deselected everywhere else), and the catalog through an OpenCL cluster.
LEPTON_TEST_OPENCL_DEVICE=gpu "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/ || status=$?
LEPTON_TEST_OPENCL_DEVICE=gpu "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_catalog.py -k opencl \
    || status=$?
"$PYTHON" benchmarks/bench_opencl.py --device opencl:gpu --repeats 20 --torch --matmul 4096,8192 ${TILES:+--tiles "$TILES"} ${BENCH_ARGS:-} || status=$?
"$PYTHON" benchmarks/bench_opencl_catalog.py --device opencl:gpu --full --torch ${CATALOG_ARGS:-} || status=$?
# One job over NumPy, PoCL, MPI and the GPU at once: placement by measured speed against the old one.
"$PYTHON" benchmarks/bench_hetero.py --gpu --cases kinds ${HETERO_ARGS:-} || status=$?
exit $status
