#!/usr/bin/env python3
"""Drives an ONNX model through Inferno's KServe v2 API with the official
`tritonclient[http]` package, unchanged: server and model readiness, model
metadata, inference with binary and with JSON tensors (checked against the
model's graph computed with numpy), and a misshapen input refused with a 400
naming it.

usage: triton_client.py HOST:PORT KEY_FILE MODEL
The model is the test model of scripts/make-onnx-test-model.py:
y = Relu(x W + b), W[i][j] = (i - j) / 4, b[j] = j / 10 - 0.1.
"""
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main(url: str, key_file: str, model: str) -> None:
    key = open(key_file).read().strip()

    def auth():
        # tritonclient adds its own headers to the dict it is given: a
        # fresh one per call.
        return {"Authorization": "Bearer " + key}

    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live(headers=auth())
    assert client.is_server_ready(headers=auth())
    assert client.is_model_ready(model, headers=auth())
    assert not client.is_model_ready("no-such-model", headers=auth())

    meta = client.get_model_metadata(model, headers=auth())
    assert meta["name"] == model, meta
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], meta
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}], meta

    w = np.array([[(i - j) / 4 for j in range(3)] for i in range(4)], dtype=np.float32)
    b = np.array([j / 10 - 0.1 for j in range(3)], dtype=np.float32)
    rng = np.random.default_rng(7)
    for rows, binary in [(1, True), (5, True), (3, False)]:
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("y", binary_data=binary)
        result = client.infer(model, [inp], outputs=[out], headers=auth())
        y = result.as_numpy("y")
        want = np.maximum(x @ w + b, 0)
        assert y.shape == (rows, 3), y.shape
        assert np.allclose(y, want, atol=1e-5), (y, want)

    # No outputs named: every output, in binary (tritonclient's default).
    x = np.ones((2, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    y = client.infer(model, [inp], headers=auth()).as_numpy("y")
    assert np.allclose(y, [[1.4, 0.5, 0.0]] * 2, atol=1e-5), y

    bad = httpclient.InferInput("x", [2, 3], "FP32")
    bad.set_data_from_numpy(np.ones((2, 3), dtype=np.float32))
    try:
        client.infer(model, [bad], headers=auth())
        raise AssertionError("a misshapen input was accepted")
    except InferenceServerException as e:
        assert e.status() == "400", e
        assert "'x'" in e.message(), e.message()
    print("tritonclient: ok")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
