"""What a dopri5 training step of FFJORD costs as `max_steps` grows: peak
memory, the first `fit` (compile included) and the steady step time.

    KERAS_BACKEND=jax python benchmarks/ode_gradient.py
        [--max-steps 50 1000] [--batch 256] [--steps 20]

The model is the README's 2-D FFJORD: one continuous flow, concat-squash MLP
64x64x64 (tanh), dopri5 at rtol = atol = 1e-5, Hutchinson trace in
training, trained with Adam on the moons density. `max_steps` bounds the
solver's attempts; a solve of this model takes a few (`nfe`, the function
evaluations of the last forward solve, is printed), so every row does the
same work and differs only in the bound. Each row runs in its own process;
"peak RSS" is that process's maximum resident memory. The first `fit` is
2 steps (compilation included), then `--steps` steps are timed, the fastest
of three runs.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")


def child(max_steps, batch, steps):
    sys.path.insert(0, ROOT)
    import keras
    import keras_flows as kf

    x = kf.datasets.toy("moons", batch * steps, seed=0)
    flow = kf.FFJORD(event_shape=(2,), hidden_units=[64, 64, 64], solver="dopri5",
                     rtol=1e-5, atol=1e-5, max_steps=max_steps, trace="hutchinson", seed=0)
    flow.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    flow.fit(x, batch_size=batch, epochs=1, steps_per_epoch=2, verbose=0)
    first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        flow.fit(x, batch_size=batch, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps)
    nfe = int(keras.ops.convert_to_numpy(flow.bijector.bijectors[0].nfe))
    print(json.dumps({"max_steps": max_steps, "first_fit_s": first,
                      "step_ms": 1e3 * min(times), "nfe": nfe,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.batch, args.steps)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"KERAS_BACKEND={backend}, batch {args.batch}")
    print("| max_steps | nfe | first fit, 2 steps (s) | step (ms) | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for max_steps in args.max_steps:
        run = subprocess.run([sys.executable, __file__, "--child", str(max_steps),
                              "--batch", str(args.batch), "--steps", str(args.steps)],
                             capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if run.returncode or not lines:
            error = (run.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"| {max_steps} | error: {error[:120]} | | | |")
            continue
        r = json.loads(lines[-1])
        print(f"| {max_steps} | {r['nfe']} | {r['first_fit_s']:.1f} | {r['step_ms']:.1f} "
              f"| {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
