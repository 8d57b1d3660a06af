"""Runs a saved model's method on the next backend in the cycle TensorFlow ->
JAX -> PyTorch -> TensorFlow: over the suite's three runs every backend both
saves a model that another scores and scores one that another saved."""

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


def on_another_backend(flow, method, directory, **inputs):
    """{backend: flow.<method>(**inputs)} from `flow` saved and reloaded on the
    backend after the current one."""
    path, data = str(directory / "flow.keras"), str(directory / "inputs.npz")
    flow.save(path)
    np.savez(data, **inputs)
    backend = BACKENDS[(BACKENDS.index(keras.backend.backend()) + 1) % len(BACKENDS)]
    out = str(directory / f"{backend}.npy")
    run = subprocess.run([sys.executable, "-c", SCRIPT, path, data, method, out],
                         env=dict(os.environ, KERAS_BACKEND=backend),
                         capture_output=True, text=True)
    assert run.returncode == 0, f"{backend}: {run.stderr[-3000:]}"
    return {backend: np.load(out)}
