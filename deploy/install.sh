#!/usr/bin/env bash
# Install Lepton on a machine or into an image: the one script the README and the Dockerfiles call.
#   deploy/install.sh [PREFIX]      (default PREFIX: /opt/lepton; the venv lives there)
# System packages first where apt is available: Debian's PoCL (a CPU OpenCL device that builds on
# every CPU generation, see the README's Devices section) and the OpenCL ICD loader.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-/opt/lepton}"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends pocl-opencl-icd ocl-icd-libopencl1 clinfo
fi
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --no-cache-dir "$here[all]"
echo "lepton installed in $prefix: $prefix/bin/lepton"
