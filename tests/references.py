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


# -- whole-op checks, run by the catalog tests of every device kind on data sized for that device --------

def check_pca(client, x, **kw):
    """PCA of x + 100 (an offset mean: centring must not cancel) against the eigenvectors of NumPy's
    covariance; components are equal up to sign."""
    pca = client.pca(x + 100, k=4, **kw)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    close(pca["explained_variance"], values[::-1][:4], rtol=1e-9)
    for got, want in zip(pca["components"], vectors[:, ::-1].T):
        assert min(np.abs(got - want).max(), np.abs(got + want).max()) < 1e-8
    close(pca["mean"], x.mean(axis=0) + 100)


def check_topk(client, x, **kw):
    """topk of an int64 matrix with many ties (k=7, largest) and of its first column as float32 (k=4,
    smallest): exact values, indices into the whole input, ties broken by the lower row."""
    values, indices = client.topk(x, k=7, **kw)
    assert np.array_equal(values, -np.sort(-x, axis=0, kind="stable")[:7])
    assert np.array_equal(np.take_along_axis(x, indices, axis=0), values)
    order = np.lexsort((np.arange(len(x))[:, None].repeat(x.shape[1], 1), -x), axis=0)[:7]
    assert np.array_equal(indices, order)
    values, indices = client.topk(x[:, 0].astype(np.float32), k=4, largest=False, **kw)
    assert np.array_equal(values, np.sort(x[:, 0])[:4].astype(np.float32))
    assert np.array_equal(x[indices, 0], values)


def check_kmeans(client, x, start, max_iter, **kw):
    """k-means from `start` equals plain Lloyd iterations (1e-9 of |centroid| + 1: the same arithmetic up
    to summation order); k-means++ seeding on a sample gets within 20% of that inertia."""
    got = client.kmeans(x, centroids=start, max_iter=max_iter, tol=1e-9, **kw)
    want, iterations = lloyd(x, start, max_iter, 1e-9)
    close(got["centroids"], want, np.abs(want) + 1, 1e-9)
    assert got["iterations"] == iterations
    assert got["counts"].sum() == len(x)
    seeded = client.kmeans(x, k=len(start), seed=3, max_iter=max_iter, **kw)
    assert seeded["inertia"] <= 1.2 * got["inertia"]
