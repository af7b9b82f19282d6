"""Dense linear algebra: matmul (two plans), linear layers and MLP inference, int8 matmul."""
from __future__ import annotations

import re

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.ops.base import Op, TensorMeta
from lepton.backends.ops.common import ACTIVATIONS, Concat, activation, check_params, matrix


def _check_matmul(op: Op, inputs, params) -> dict:
    check_params(op, params, ("plan",))
    a, b = matrix(op, inputs, "a"), matrix(op, inputs, "b")
    if a.shape[1] != b.shape[0]:
        raise InvalidInput(f"matmul: inner dimensions differ: a is {a.shape[0]}x{a.shape[1]}, "
                           f"b is {b.shape[0]}x{b.shape[1]} (a's columns must equal b's rows)")
    if a.dtype != b.dtype:
        raise InvalidInput(f"matmul: a is {a.dtype} and b is {b.dtype}; give both the same dtype")
    return {**params, "plan": params.get("plan", "auto")}


class Matmul(Op):
    """C = A @ B. Plans: "rows" cuts A by rows and sends B whole (once per agent: it is cached);
    "inner" cuts A's columns and B's rows and adds the partial products. "auto" picks inner when
    the inner dimension dwarfs the output (k >= 4 max(m, n)), where row blocks would each need
    all of B."""

    name = "matmul"
    split_inputs, whole_inputs = ("a",), ("b",)
    abstract = True  # it only picks a plan: the ops below run

    def resolve(self, inputs, params):
        plan = params.get("plan", "auto")
        if plan not in ("auto", "rows", "inner"):
            raise InvalidInput(f"matmul: parameter 'plan' must be 'auto', 'rows' or 'inner'; got {plan!r}")
        if plan == "auto" and "a" in inputs and "b" in inputs and len(inputs["a"].shape) == 2 == len(inputs["b"].shape):
            (m, k), n = inputs["a"].shape, inputs["b"].shape[1]
            plan = "inner" if k >= 4 * max(m, n) else "rows"
        return MATMUL_INNER if plan == "inner" else MATMUL_ROWS


class MatmulRows(Concat):
    name = "matmul.rows"
    block_bytes = 4 << 20  # BLAS rounds a row differently in different row blocks: fix the blocks
    split_inputs, whole_inputs = ("a",), ("b",)

    def validate(self, inputs, params):
        return {**_check_matmul(self, inputs, params), "plan": "rows"}

    def row_result(self, inputs, params):
        return "c", TensorMeta(inputs["a"].dtype, (inputs["a"].shape[0], inputs["b"].shape[1]))

    def reference(self, inputs, params):
        return {"c": inputs["a"] @ inputs["b"]}


class MatmulInner(Op):
    name = "matmul.inner"
    block_bytes = 4 << 20  # float sums: fold fixed blocks (backends/blocks.py)
    split_inputs = ("a", "b")
    order_sensitive = True  # A's columns and B's rows must stay paired

    def validate(self, inputs, params):
        return {**_check_matmul(self, inputs, params), "plan": "inner"}

    def rows(self, inputs):
        return inputs["b"].shape[0]

    def take(self, source, start, stop):
        return {"a": source["a"][:, start:stop], "b": source["b"][start:stop]}

    def reference(self, inputs, params):
        return {"c": inputs["a"] @ inputs["b"]}

    def merge(self, left, right):
        return {"c": left["c"] + right["c"]}

    def finalize(self, partial, params):
        return {"c": partial["c"]}


MATMUL_ROWS, MATMUL_INNER = MatmulRows(), MatmulInner()


class Mlp(Concat):
    """Batched inference through layers y = act(x W_i + b_i): inputs x, w0, b0, w1, b1, ...
    Hidden layers use `activation` (default relu), the last `output` (default none; softmax for
    class probabilities). Weights are cached on each agent, so a model ships once per agent."""

    name = "mlp"
    block_bytes = 4 << 20  # BLAS rounds a row differently in different row blocks: fix the blocks
    _layer = re.compile(r"^([wb])(\d+)$")

    def layers(self, names) -> int:
        return sum(1 for n in names if n.startswith("w") and self._layer.match(n))

    def check_inputs(self, names):
        layers = self.layers(names)
        expected = {"x"} | {f"{p}{i}" for i in range(layers) for p in "wb"}
        if layers == 0 or set(names) != expected:
            raise InvalidInput(f"op {self.name!r} takes x and, per layer i = 0, 1, ..., weights wi and biases bi; "
                               f"got {sorted(names)}")

    def validate(self, inputs, params):
        check_params(self, params, ("activation", "output"))
        x = matrix(self, inputs, "x")
        width = x.shape[1]
        for i in range(self.layers(inputs)):
            w, b = matrix(self, inputs, f"w{i}"), matrix(self, inputs, f"b{i}", ndim=1)
            if w.shape[0] != width or b.shape[0] != w.shape[1]:
                raise InvalidInput(f"{self.name}: layer {i} does not fit: it gets {width} features, w{i} is "
                                   f"{w.shape[0]}x{w.shape[1]}, b{i} has {b.shape[0]} (expected {width}xN and N)")
            if w.dtype != x.dtype or b.dtype != x.dtype:
                raise InvalidInput(f"{self.name}: layer {i} weights must have x's dtype {x.dtype}")
            width = w.shape[1]
        return {"activation": activation(self, params, "activation", "relu"),
                "output": activation(self, params, "output", "none")}

    def row_result(self, inputs, params):
        last = inputs[f"w{self.layers(inputs) - 1}"] if "w" not in inputs else inputs["w"]
        return "y", TensorMeta(inputs["x"].dtype, (inputs["x"].shape[0], last.shape[1]))

    def reference(self, inputs, params):
        y, layers = inputs["x"], self.layers(inputs)
        for i in range(layers):
            act = params["output"] if i == layers - 1 else params["activation"]
            y = ACTIVATIONS[act](y @ inputs[f"w{i}"] + inputs[f"b{i}"]).astype(inputs["x"].dtype)
        return {"y": y}


class Linear(Mlp):
    """One layer, y = act(x w + b): inputs x, w, b; parameter `activation` (default none)."""

    name = "linear"

    def check_inputs(self, names):
        if set(names) != {"x", "w", "b"}:
            raise InvalidInput(f"op 'linear' takes inputs ['x', 'w', 'b']; got {sorted(names)}")

    def validate(self, inputs, params):
        check_params(self, params, ("activation",))
        renamed = {"x": inputs["x"], "w0": inputs["w"], "b0": inputs["b"]}
        return {"output": Mlp.validate(self, renamed, {"output": params.get("activation", "none")})["output"],
                "activation": "none"}

    def reference(self, inputs, params):
        return Mlp.reference(self, {"x": inputs["x"], "w0": inputs["w"], "b0": inputs["b"]}, params)


class Qmatmul(Concat):
    """y = x @ w with int8 weights: per-output-channel symmetric scales, activations quantized per
    row, int8 x int8 products accumulated exactly (as int32 would) and dequantized.

    Inputs: x (float32) and either float weights w (the service quantizes them, and reports the
    error against the float32 product: relative_error, max_abs_error) or w_q (int8) with w_scale.
    """

    name = "qmatmul"
    block_bytes = 4 << 20  # float sums: fold fixed blocks (backends/blocks.py)

    def check_inputs(self, names):
        if set(names) == {"x", "w_q"}:
            raise InvalidInput("qmatmul: int8 weights w_q need their per-output-channel scales w_scale "
                               "(float32, one per column), or send float weights w to have them quantized")
        if set(names) not in ({"x", "w"}, {"x", "w_q", "w_scale"}):
            raise InvalidInput(f"qmatmul takes x with w, or x with w_q and w_scale; got {sorted(names)}")

    def validate(self, inputs, params):
        check_params(self, params, ())
        x = matrix(self, inputs, "x", dtypes=(np.dtype(np.float32),))
        if "w" in inputs:
            w = matrix(self, inputs, "w", dtypes=(np.dtype(np.float32),))
        else:
            w = matrix(self, inputs, "w_q", dtypes=(np.dtype(np.int8),))
            scale = matrix(self, inputs, "w_scale", dtypes=(np.dtype(np.float32),), ndim=1)
            if scale.shape[0] != w.shape[1]:
                raise InvalidInput(f"qmatmul: w_scale has {scale.shape[0]} values; w_q has {w.shape[1]} columns")
        if x.shape[1] != w.shape[0]:
            raise InvalidInput(f"qmatmul: inner dimensions differ: x is {x.shape[0]}x{x.shape[1]}, "
                               f"weights are {w.shape[0]}x{w.shape[1]}")
        return {}

    def prepare(self, arrays, params):
        if "w_q" in arrays:
            return {"w_q": arrays["w_q"], "w_scale": arrays["w_scale"]}
        w = arrays["w"]
        scale = np.abs(w).max(axis=0) / 127
        scale[scale == 0] = 1
        w_q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        return {"w_q": w_q, "w_scale": scale.astype(np.float32), "w": w}

    def reference(self, inputs, params):
        x = inputs["x"]
        x_scale = np.abs(x).max(axis=1) / 127
        x_scale[x_scale == 0] = 1
        x_q = np.clip(np.rint(x / x_scale[:, None]), -127, 127)
        # NumPy has no integer BLAS: int8 products summed in float64 are exact below 2^53, the
        # same integers an int32 accumulator holds (for k < 133,000, where int32 cannot overflow).
        acc = x_q @ inputs["w_q"].astype(np.float64)
        y = (acc * x_scale[:, None] * inputs["w_scale"][None, :]).astype(np.float32)
        out = {"y": y}
        if "w" in inputs:
            ref = x @ inputs["w"]
            err = (y - ref).astype(np.float64)
            out.update(sq_err=np.sum(err ** 2), sq_ref=np.sum(ref.astype(np.float64) ** 2),
                       max_err=np.max(np.abs(err), initial=0.0))
        return out

    def merge(self, left, right):
        out = {"y": np.concatenate([left["y"], right["y"]])}
        if "sq_err" in left:
            out.update(sq_err=left["sq_err"] + right["sq_err"], sq_ref=left["sq_ref"] + right["sq_ref"],
                       max_err=np.maximum(left["max_err"], right["max_err"]))
        return out

    def finalize(self, partial, params):
        out = {"y": partial["y"]}
        if "sq_err" in partial:
            out["relative_error"] = np.sqrt(partial["sq_err"] / max(partial["sq_ref"], 1e-300))
            out["max_abs_error"] = partial["max_err"]
        return out


OPS = (Matmul(), MATMUL_ROWS, MATMUL_INNER, Mlp(), Linear(), Qmatmul())
