"""Same inputs and partitioning give bitwise the same result on 1-3 agents and any arrival order."""
import numpy as np
import pytest

import lepton


@pytest.fixture(scope="module")
def shuffled():
    """Three agents that sleep a random time per partition, so partials arrive in random order."""
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", "0.02"]) as cluster:
        yield cluster


def results(client, x):
    out = []
    for op, params in [("sum", {}), ("mean", {}), ("var", {}), ("histogram", {"bins": 8, "range": [-2, 2]})]:
        for scheme in ("row_blocks", "hash", "round_robin"):
            result = client.run(op, x, partitioning=scheme, partitions=37, **params)
            out.append({k: v.tobytes() for k, v in result.items()})
    return out


def test_bitwise_identical_across_agent_counts_and_arrival_orders(clusters, shuffled, rng):
    x = (rng.standard_normal((60_000, 2)) * 1e3).astype(np.float32)
    expected = results(clusters[1].client(), x)
    assert results(clusters[2].client(), x) == expected
    assert results(clusters[3].client(), x) == expected
    for _ in range(2):
        assert results(shuffled.client(), x) == expected
