#!/usr/bin/env python3
"""Writes ONNX models with the PyPI `onnx` package.

make-onnx-test-model.py OUT.onnx
    the backend's test model: y = Relu(x @ W + b), x FP32 [batch, 4],
    y FP32 [batch, 3], with W[i][j] = (i - j) / 4 and b[j] = j / 10 - 0.1,
    batch left free.
make-onnx-test-model.py OUT.onnx --mlp IN HIDDEN LAYERS OUT
    the benchmark's model: an MLP of LAYERS hidden layers of HIDDEN units
    (MatMul, Add, Relu) from x FP32 [batch, IN] to y FP32 [batch, OUT],
    weights drawn with numpy's seed 0.
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main(out: str) -> None:
    w = [(i - j) / 4 for i in range(4) for j in range(3)]
    b = [j / 10 - 0.1 for j in range(3)]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "affine_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, [4, 3], w),
            helper.make_tensor("b", TensorProto.FLOAT, [3], b),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


def mlp(out: str, n_in: int, hidden: int, layers: int, n_out: int) -> None:
    rng = np.random.default_rng(0)
    sizes = [n_in] + [hidden] * layers + [n_out]
    nodes, inits = [], []
    x = "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    if len(sys.argv) == 2:
        main(sys.argv[1])
    elif len(sys.argv) == 7 and sys.argv[2] == "--mlp":
        mlp(sys.argv[1], *(int(v) for v in sys.argv[3:]))
    else:
        sys.exit(__doc__)
