"""On a real GPU only (marker `gpu`: deselected unless `-m` selects it; benchmarks/gpu_check.sh runs
`-m gpu` with LEPTON_TEST_OPENCL_DEVICE=gpu). The device the OpenCL tests picked is a GPU with
memory of its own, so they took the GPU kernels and the staged host-to-device copies, not PoCL's."""
import numpy as np
import pytest

from lepton.backends.ops import REGISTRY, TensorMeta
from opencl_devices import usable_opencl_device
from references import assert_matches

pytestmark = pytest.mark.gpu


def test_the_opencl_tests_ran_on_a_discrete_gpu():
    import pyopencl as cl

    from lepton.backends.opencl import OpenCLDevice, ProgramCache

    cl_device, spec = usable_opencl_device()
    assert cl_device.type & cl.device_type.GPU, f"{spec} is {cl_device.name}, not a GPU"
    device = OpenCLDevice(cl_device, spec, cache=ProgramCache(), calibrate=False)
    try:
        assert device.is_gpu and not device.allocator.zero_copy and device.allocator.stager is not None
        x = np.random.default_rng(1).integers(-1000, 1000, 1 << 26).astype(np.int64)  # 512 MB through the stager
        op = REGISTRY["sum"]
        params = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
        assert_matches("sum", x, op.finalize(device.run(op, {"x": x}, params), params))  # integers: exact
    finally:
        device.close()
