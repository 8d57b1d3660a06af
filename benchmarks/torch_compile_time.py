"""How long `jit_compile=True` (`torch.compile` on PyTorch) delays the first
training steps of the throughput benchmark's models.

    OMP_NUM_THREADS=1 KERAS_BACKEND=torch python benchmarks/torch_compile_time.py [realnvp maf nsf]

Each model is the one of `benchmarks/throughput.py` (D = 8, 5 transforms,
MLP 2 x 64, Adam(1e-3)); `fit` runs on 1,024 rows at batch 512 twice: the
first includes the compile, the second is two compiled steps.
"""

import sys
import time

import numpy as np
import keras

import keras_flows as kf

MODELS = {
    "realnvp": lambda: kf.RealNVP(event_shape=(8,), num_layers=5, hidden_units=[64, 64]),
    "maf": lambda: kf.MAF(event_shape=(8,), num_layers=5, hidden_units=[64, 64]),
    "nsf": lambda: kf.NSF(event_shape=(8,), num_layers=5, hidden_units=[64, 64], bins=8,
                          bound=4.0),
}


def main(names):
    x = np.random.default_rng(0).normal(size=(1024, 8)).astype("float32")
    for name in names:
        flow = MODELS[name]()
        flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            flow.fit(x, batch_size=512, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
        print(f"{name}: first fit (2 steps, with the compile) {times[0]:.1f} s, "
              f"second {times[1]:.2f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
