"""NumPy references and checks shared by the catalog tests (NumPy device, MPI pool, OpenCL)."""
import numpy as np


def close(got, want, scale=None, rtol=1e-10):
    """|got - want| <= rtol * scale elementwise (scale: |want| unless given, e.g. |a| @ |b|)."""
    scale = np.abs(want) if scale is None else scale
    assert np.shape(got) == np.shape(want), (np.shape(got), np.shape(want))
    assert np.all(np.abs(got - want) <= rtol * (scale + 1e-300) + 1e-300), np.max(np.abs(got - want))


def csr(dense, index=np.int32):
    """(indptr, indices, data, shape) of a dense matrix, as the sparse ops take it."""
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum((dense != 0).sum(axis=1))]).astype(np.int64)
    return indptr, cols.astype(index), dense[rows, cols], dense.shape


def lloyd(x, centroids, max_iter, tol):
    """Plain Lloyd iterations: (centroids, iterations), stopping when no centroid moves more than tol."""
    for i in range(1, max_iter + 1):
        labels = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[labels == j].mean(axis=0) if np.any(labels == j) else centroids[j]
                        for j in range(len(centroids))])
        shift = np.max(np.linalg.norm(new - centroids, axis=1))
        centroids = new
        if shift <= tol:
            break
    return centroids, i


def opencl_test_device():
    """(pyopencl device, agent spec) of the device the OpenCL tests use: PoCL's CPU device unless
    LEPTON_TEST_OPENCL_DEVICE (benchmarks/gpu_check.sh sets "gpu") names another; skips the module
    when there is none."""
    import os

    import pytest

    from lepton.errors import LeptonError
    from lepton.backends.opencl import all_devices, select_devices

    selector = os.environ.get("LEPTON_TEST_OPENCL_DEVICE", "cpu")
    try:
        device = select_devices(selector)[0]
    except LeptonError:
        pytest.skip(f"no OpenCL device matches {selector!r}", allow_module_level=True)
    return device, f"opencl:{all_devices().index(device)}"
