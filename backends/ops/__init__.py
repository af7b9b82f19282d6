"""The op registry: every op is registered once, by name, with its whole contract."""
from lepton.backends.ops.base import Op, Partial, TensorMeta
from lepton.backends.ops import kmeans, linalg, reductions, sparse, stats

REGISTRY: dict[str, Op] = {op.name: op for module in (reductions, linalg, stats, kmeans, sparse) for op in module.OPS}


def runnable() -> dict[str, Op]:
    """The ops a device runs: every registered op but the abstract ones, which only resolve to others.
    (A function, not a constant: tests register ops of their own before opening a device.)"""
    return {name: op for name, op in REGISTRY.items() if not op.abstract}


def get_op(name: str) -> Op:
    from lepton.errors import InvalidInput

    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInput(f"unknown op {name!r}; available ops: {', '.join(sorted(REGISTRY))}") from None


__all__ = ["Op", "Partial", "TensorMeta", "REGISTRY", "get_op", "runnable"]
