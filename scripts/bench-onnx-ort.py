#!/usr/bin/env python3
"""The anchor of `inferno bench onnx`: onnxruntime's own Python
InferenceSession on the same file and thread count, in process.

usage: bench-onnx-ort.py MODEL.onnx [--threads T] [--requests N] [--rows R]
                         [--batch B] [--json]

Reports single requests of R rows looped one after another (latency p50 and
p99, requests/s) and best-case batches of B requests stacked (rows/s).
Inputs are random FP32 (other types: zeros) with free dimensions set to R
(first) and 8 (others), as `inferno bench onnx` makes them.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def inputs(session, rows, rng):
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else (rows if k == 0 else 8) for k, d in enumerate(i.shape)]
        if i.type == "tensor(float)":
            feed[i.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64,
                     "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}[i.type]
            feed[i.name] = np.zeros(shape, dtype=dtype)
    return feed


def percentile(values, p):
    v = sorted(values)
    rank = max(1, min(len(v), int(np.ceil(p / 100 * len(v)))))
    return v[rank - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    single = inputs(session, a.rows, rng)
    for _ in range(8):
        session.run(None, single)
    lat = []
    t0 = time.perf_counter()
    for _ in range(a.requests):
        s = time.perf_counter()
        session.run(None, single)
        lat.append((time.perf_counter() - s) * 1000)
    wall = time.perf_counter() - t0
    batched = inputs(session, a.rows * a.batch, rng)
    session.run(None, batched)
    runs = max(1, a.requests // a.batch)
    t1 = time.perf_counter()
    for _ in range(runs):
        session.run(None, batched)
    bwall = time.perf_counter() - t1
    report = {
        "anchor": "onnxruntime " + ort.__version__ + " InferenceSession (Python, in process)",
        "threads": a.threads,
        "rows_per_request": a.rows,
        "single_latency_ms_p50": percentile(lat, 50),
        "single_latency_ms_p99": percentile(lat, 99),
        "single_requests_per_s": a.requests / wall,
        "batch": a.batch,
        "batched_requests_per_s": runs * a.batch / bwall,
    }
    if a.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>24}: {v:.3f}" if isinstance(v, float) else f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
