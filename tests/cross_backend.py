"""Runs a saved model's method on every backend but the current one."""

import os
import subprocess
import sys

import numpy as np
import keras

BACKENDS = ("tensorflow", "jax", "torch")

SCRIPT = """
import sys, numpy as np, keras, keras_flows
from keras import ops
flow = keras.saving.load_model(sys.argv[1])
method = getattr(flow, sys.argv[3])
np.save(sys.argv[4], ops.convert_to_numpy(method(**dict(np.load(sys.argv[2])))))
"""


def on_other_backends(flow, method, directory, **inputs):
    """{backend: flow.<method>(**inputs)} from `flow` saved and reloaded there."""
    path, data = str(directory / "flow.keras"), str(directory / "inputs.npz")
    flow.save(path)
    np.savez(data, **inputs)
    results = {}
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        out = str(directory / f"{backend}.npy")
        run = subprocess.run([sys.executable, "-c", SCRIPT, path, data, method, out],
                             env=dict(os.environ, KERAS_BACKEND=backend),
                             capture_output=True, text=True)
        assert run.returncode == 0, f"{backend}: {run.stderr[-3000:]}"
        results[backend] = np.load(out)
    assert len(results) == len(BACKENDS) - 1, results
    return results
