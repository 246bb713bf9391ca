#!/usr/bin/env python3
"""Writes the ONNX test model of the backend's tests with the PyPI `onnx`
package: y = Relu(x @ W + b), x FP32 [batch, 4], y FP32 [batch, 3], with
W[i][j] = (i - j) / 4 and b[j] = j / 10 - 0.1, batch left free."""
import sys

import onnx
from onnx import TensorProto, helper


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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make-onnx-test-model.py OUT.onnx")
    main(sys.argv[1])
