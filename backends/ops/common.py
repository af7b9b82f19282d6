"""Checks and small kernels shared by the ops."""
from __future__ import annotations

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.ops.base import Op, Params, Partial, TensorMeta

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_params(op: Op, params: Params, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidInput(f"op {op.name!r} got unknown parameter(s) {unknown}; it takes "
                           f"{', '.join(allowed) if allowed else 'no parameters'}")


def chan_merge(left: Partial, right: Partial, outer=np.multiply) -> Partial:
    """Chan et al.'s pairwise update of (n, mean, m2) partials, stable where a sum of squares would
    cancel: m2 gains outer(delta, delta) * na * nb / n, with `outer` elementwise for per-column
    variances (var) and np.outer for a co-moment matrix (pca)."""
    na, nb = left["n"], right["n"]
    n = na + nb
    delta = right["mean"] - left["mean"]
    return {"n": n, "mean": left["mean"] + delta * (nb / n),
            "m2": left["m2"] + right["m2"] + outer(delta, delta) * (na * nb / n)}


def matrix(op: Op, inputs: dict[str, TensorMeta], name: str, dtypes=FLOATS, ndim: int = 2) -> TensorMeta:
    """The input `name`, checked to have `ndim` dimensions and an allowed dtype."""
    m = inputs[name]
    if len(m.shape) != ndim:
        raise InvalidInput(f"op {op.name!r}: input {name!r} must be {ndim}-D; got shape {list(m.shape)}")
    if m.dtype not in dtypes:
        raise InvalidInput(f"op {op.name!r}: input {name!r} has dtype {m.dtype}; expected "
                           f"{' or '.join(str(d) for d in dtypes)}")
    if 0 in m.shape:
        raise InvalidInput(f"op {op.name!r}: input {name!r} is empty (shape {list(m.shape)})")
    return m


def positive_int(op: Op, params: Params, name: str, default=None, upper: int | None = None) -> int:
    value = params.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (upper is not None and value > upper):
        bound = f"in [1, {upper}]" if upper is not None else "positive"
        raise InvalidInput(f"op {op.name!r}: parameter {name!r} must be a {bound} integer; got {value!r}")
    return value


def _gelu(z):
    # The tanh approximation (as in GPT-2 and torch's approximate="tanh"): NumPy has no erf.
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS = {
    "none": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "gelu": _gelu,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "softmax": _softmax,
}


def activation(op: Op, params: Params, name: str, default: str) -> str:
    value = params.get(name, default)
    if value not in ACTIVATIONS:
        raise InvalidInput(f"op {op.name!r}: parameter {name!r} must be one of {sorted(ACTIVATIONS)}; got {value!r}")
    return value


class Concat(Op):
    """Ops whose partials are row blocks of the result, concatenated in order."""

    order_sensitive = True
    output = "y"

    def merge(self, left, right):
        return {k: np.concatenate([left[k], right[k]]) for k in left}

    def finalize(self, partial, params):
        return dict(partial)
