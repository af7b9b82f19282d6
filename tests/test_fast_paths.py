"""The fast paths of issue 20 against NumPy, and k-means++ seeding (issue 11 §5.3).

The initial centroids must depend on the data and the seed alone: not on how many partitions the
rows are cut into, nor on whether a device folds 4 MiB blocks (NumPy, MPI) or runs a partition in
one call (OpenCL). Tolerances are the README's: float32 sums 1e-5 x sum|x|, means and variances 1e-5
relative (float64: 1e-12); min, max and count exact.
"""
import numpy as np
import pytest

from lepton.backends.blocks import block_rows
from lepton.backends.numpy_device import NumpyDevice
from lepton.backends.ops import REGISTRY, TensorMeta
from lepton.backends.ops.kmeans import kmeans_plus_plus
from references import assert_matches, lloyd

KMEANS = REGISTRY["kmeans"]


def sample_params(x, k, seed):
    return KMEANS.validate({"x": TensorMeta(x.dtype, x.shape)}, {"k": k, "seed": seed})


def sample(x, k, seed, cuts, blocked):
    """The merged round-0 sample of x cut at `cuts`, each partition folded in blocks (the NumPy
    device) or computed in one call (as the OpenCL device does)."""
    params, device, merged = sample_params(x, k, seed), NumpyDevice(), {}
    for lo, hi in zip([0, *cuts], [*cuts, len(x)]):
        p = {**params, "row_offset": lo}
        part = device.run(KMEANS, {"x": x[lo:hi]}, p) if blocked else KMEANS.reference({"x": x[lo:hi]}, p)
        merged = KMEANS.combine(merged, part)
    return merged["sample"]


def test_the_sample_is_the_same_for_any_partitioning_and_device():
    x = np.random.default_rng(3).standard_normal((3 * block_rows(KMEANS, {"x": np.empty((1, 4))}) + 77, 4))
    want = sample(x, 8, 11, [], blocked=True)
    assert 8 <= len(want) < len(x)
    for cuts, blocked in [([], False), ([1000], True), ([1, 150_000, 150_001], True), ([5, 99_999], False)]:
        got = sample(x, 8, 11, cuts, blocked)
        assert np.array_equal(got, want), (cuts, blocked)
    assert not np.array_equal(sample(x, 8, 12, [], True), want)  # the seed still matters
    # ... and so the initial centroids are the same too.
    assert np.array_equal(kmeans_plus_plus(sample(x, 8, 11, [7], False), 8, 11), kmeans_plus_plus(want, 8, 11))


def test_the_same_initial_centroids_on_clusters_cut_differently(clusters):
    # Structureless points: a different sample gives visibly different centroids after one round.
    x = np.random.default_rng(4).random((60_000, 3))
    results = []
    for agents, partitions in [(1, 1), (2, 5), (3, 13)]:
        client = clusters[agents].client(timeout=120)
        results.append(client.kmeans(x, k=6, max_iter=1, seed=9, partitions=partitions)["centroids"])
    for got in results[1:]:
        # Only the reassociated float64 sums of one Lloyd round differ: 1e-12 relative.
        np.testing.assert_allclose(got, results[0], rtol=1e-12)


@pytest.mark.parametrize("precision", ["auto", "float64"])
def test_float32_kmeans_matches_lloyd_in_float64(clusters, precision):
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(c, 0.5, size=(5000, 4)) for c in rng.uniform(-9, 9, size=(6, 4))]).astype(np.float32)
    start = x[::5000] + 0.25  # one start in each blob, so no boundary cuts through a blob
    client = clusters[2].client(timeout=120)
    got = client.kmeans(x, centroids=start, max_iter=20, tol=1e-9, partitions=4, precision=precision)
    want, iterations = lloyd(x.astype(np.float64), start.astype(np.float64), 20, 1e-9)
    x64 = x.astype(np.float64)
    labels = np.argmin(((x64[:, None, :] - want[None]) ** 2).sum(-1), axis=1)
    # Well-separated blobs have no near-ties at float32 resolution: the same labels, so counts are
    # exact and centroids (float64 sums of float32 points) agree to float64 rounding.
    assert got["iterations"] == iterations
    assert np.array_equal(got["counts"], np.bincount(labels, minlength=6))
    np.testing.assert_allclose(got["centroids"], want, rtol=1e-9, atol=1e-9)
    inertia = np.sum((x64 - want[labels]) ** 2)
    np.testing.assert_allclose(got["inertia"], inertia, rtol=1e-5)  # float32 (x - c)^2 per row


def test_precision_is_checked(clusters):
    client = clusters[1].client(timeout=60)
    with pytest.raises(Exception, match="precision"):
        client.kmeans(np.ones((10, 2), np.float32), k=2, precision="half")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_describe_is_the_six_reductions_in_one_job(clusters, dtype):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((300_000, 3)) * 50 + 1e3).astype(dtype)  # an offset: centring matters
    client = clusters[2].client(timeout=120)
    got = client.describe(x, ddof=1, partitions=5)
    # Every result within the bound of describe's fold (tests/references.py): min, max and count exactly,
    # mean and var to the float64 answer rounded (NumPy's own float32 var of offset data is off by ~1e-4).
    assert_matches("describe", x, got, ddof=1)
    # The sum is Sum's own fold of the same blocks: bitwise the single op's.
    assert np.array_equal(got["sum"], client.sum(x, partitions=5))
    assert client.jobs(limit=3)[0].op == "sum" and client.jobs(limit=3)[1].op == "describe"
    # Asking for some results only (W1's sum, min and max: no centred pass) gives the same bits.
    some = client.describe(x, partitions=5, stats=["max", "sum", "min"])
    assert list(some) == ["sum", "min", "max"]
    assert all(np.array_equal(some[k], got[k]) for k in some)


def test_framed_chunks_parse_as_the_messages_they_replace():
    from lepton import wire
    from lepton.v1 import coordinator_service_pb2 as pb

    arrays = [np.arange(1000, dtype=np.float32), np.zeros(0, np.int64), np.arange(70_000, dtype=np.float64)]
    framed = [pb.PutDatasetRequest.FromString(b) for b in wire.framed_chunks(arrays, chunk_bytes=100_000)]
    assert [(f.chunk.tensor_index, f.chunk.offset, len(f.chunk.data)) for f in framed] == \
        [(i, o, min(100_000, a.nbytes - o)) for i, a in enumerate(arrays) for o in range(0, a.nbytes, 100_000)]
    assembler = wire.TensorAssembler([wire.header(f"t{i}", a) for i, a in enumerate(arrays)])
    for f in framed:
        assembler.add(f.chunk)
    for got, want in zip(assembler.finish_list(), arrays):
        assert np.array_equal(got, want)


def test_the_coordinators_copy_is_written_in_the_background(tmp_path):
    from lepton.coordinator.datasets import DatasetStore

    store = DatasetStore(tmp_path)
    x = np.arange(10_000, dtype=np.float32)
    dataset, old = store.create("d", {"x": x}, np.array([0, 5000, 10_000]), replace=False)
    assert old is None and np.array_equal(dataset.share(1)["x"], x[5000:])  # served before it is on disk
    assert dataset.saved.wait(60)
    assert isinstance(dataset.arrays["x"], np.memmap) and np.array_equal(dataset.arrays["x"], x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d.{dataset.version}.json", f"d.{dataset.version}.x.npy"]
    store.drop("d")
    assert list(tmp_path.iterdir()) == []


def test_a_streamed_put_places_every_partition_and_serves_jobs(clusters):
    client = clusters[2].client(timeout=120)
    x = np.random.default_rng(12).standard_normal((200_000, 4)).astype(np.float32)
    ds = client.put("streamed", x, partitions=13, replace=True)
    try:
        assert ds.info.partitions == 13
        np.testing.assert_array_equal(client.max(ds), x.max(axis=0))
        assert np.array_equal(client.run("sum", ds)["sum"], client.run("sum", x, partitions=13)["sum"])
    finally:
        client.drop("streamed")
