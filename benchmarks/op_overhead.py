"""What one eager `keras.ops` call costs on PyTorch, beside the torch call it runs (µs).

    OMP_NUM_THREADS=1 KERAS_BACKEND=torch python benchmarks/op_overhead.py [--calls 20000]

Each pair computes the same thing on a (512, 8) float32 tensor, the size of
a vector-flow batch in `benchmarks/throughput.py`, where the arithmetic is
cheap and the cost of a call is mostly dispatch. Prints one JSON line: per
operation, the mean time of a `keras.ops` call and of the torch call; and
for a coupling's conditioner (an `MLP` with two hidden layers of 64 on 4
features), the mean time of Keras's `Layer.__call__`, of
`utils.backend.call_layer` (what couplings call) and of the layer's `call`;
and a softmax over a spline's 8 bins and over 64 entries: `ops.softmax`,
`utils.math.softmax` and `torch.softmax`.
"""

import argparse
import json
import os
import sys
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
from keras import ops  # noqa: E402

from keras_flows.layers import MLP  # noqa: E402
from keras_flows.utils.backend import call_layer, device_description  # noqa: E402
from keras_flows.utils.math import softmax  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "torch":
        parser.error("needs KERAS_BACKEND=torch")
    import torch

    x = torch.randn(512, 8)
    pairs = {
        "reshape": (lambda: ops.reshape(x, (-1, 4, 2)), lambda: x.reshape(-1, 4, 2)),
        "add": (lambda: ops.add(x, x), lambda: x + x),
        "exp": (lambda: ops.exp(x), lambda: torch.exp(x)),
        "where": (lambda: ops.where(x > 0, x, -x), lambda: torch.where(x > 0, x, -x)),
        "concatenate": (lambda: ops.concatenate([x, x], axis=-1),
                        lambda: torch.cat([x, x], -1)),
        "sum": (lambda: ops.sum(x, axis=-1), lambda: x.sum(-1)),
    }
    row = {"device": device_description(), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d")}
    for name, (keras_call, torch_call) in pairs.items():
        keras_call(), torch_call()
        row[name] = {f"{who}_us": round(1e6 * timeit.timeit(call, number=args.calls)
                                        / args.calls, 1)
                     for who, call in (("keras", keras_call), ("torch", torch_call))}
    # A spline's bin widths: softmax over a short last axis, and over 64.
    for shape in [(512, 8, 8), (512, 64)]:
        u = torch.randn(*shape)
        calls = {"ops.softmax": lambda: ops.softmax(u, axis=-1),
                 "math.softmax": lambda: softmax(u),
                 "torch.softmax": lambda: torch.softmax(u, -1)}
        row["softmax_" + "x".join(map(str, shape))] = {
            f"{who}_us": round(1e6 * timeit.timeit(call, number=args.calls // 10)
                               / (args.calls // 10), 1) for who, call in calls.items()}
    # A coupling's conditioner, called three ways: Keras's `__call__`, the
    # library's `call_layer` (what couplings use), and `call` itself.
    mlp = MLP(16, hidden_units=(64, 64))
    mlp.build((None, 4))
    h = x[:, :4]
    calls = {"__call__": lambda: mlp(h, training=True),
             "call_layer": lambda: call_layer(mlp, h, training=True),
             "call": lambda: mlp.call(h)}
    for call in calls.values():
        call()
    row["mlp_2x64"] = {f"{who}_us": round(1e6 * timeit.timeit(call, number=args.calls)
                                          / args.calls, 1) for who, call in calls.items()}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
