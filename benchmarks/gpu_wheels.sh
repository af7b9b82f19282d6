#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a machine that cannot reach a package registry (the lent GPU
# machine: Python 3.12, torch and numpy installed, no pyopencl). Run here, where pip works:
#
#   benchmarks/gpu_wheels.sh            # into .whl/ (git-ignored); then carry .whl to the GPU machine
#
# It downloads, for CPython 3.12 on x86-64 manylinux, the versions installed in this venv of what
# Lepton and its OpenCL tests import beyond that image: pyopencl and its needs, and the pinned gRPC
# and protobuf (the committed stubs check their versions at import). gpu_check.sh installs them with
# pip --no-index --no-deps --target, and Lepton itself from the working tree (else the lepton wheel
# made here), when `import pyopencl` or `import lepton` fails there. About 24 MB: carry limit is 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PACKAGES="pyopencl pytools platformdirs siphash24 typing_extensions grpcio grpcio-health-checking grpcio-reflection
          protobuf crc32c plotly narwhals cryptography cffi pycparser"
specs=()
for name in $PACKAGES; do
    version=$("$PYTHON" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "gpu_wheels: $name is not installed in $PYTHON's environment" >&2; exit 1; }
    specs+=("$name==$version")
done
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64; do
    platforms+=(--platform "$p")
done
for spec in "${specs[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$spec"
done
# Lepton itself, a fallback only: gpu_check.sh installs it from the working tree there (this wheel is
# as old as this run).
rm -f .whl/lepton-*.whl
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-index -w .whl .
ls -la .whl
du -sh .whl
