"""Peak memory of one Glow training step, with and without remat and mixed precision.

    OMP_NUM_THREADS=1 KERAS_BACKEND=jax python benchmarks/glow_memory.py \\
        [--sizes 3,8,128,16 3,16,256,16] [--modes none,step,level,mixed,mixed+step] \\
        [--image-size 32] [--timeout 300] [--out benchmarks/glow_memory.md]
    python benchmarks/glow_memory.py --control      # JAX: jax.checkpoint alone

Each size `L,K,width,batch` is Glow(levels=L, steps_per_level=K,
hidden_channels=width) on `image-size`^2 x 3 images (CIFAR-10's 32x32 by
default) trained through the plain `model.fit` with Adam on a batch of uniform
random uint8 images (memory does not depend on the pixels). Each size and
mode runs in a fresh subprocess, which:

1. builds and compiles the model, and records the memory in use then
   (`model_mb`: weights, the process, the backend's runtime);
2. runs one `fit` epoch of one step (tracing, compilation, ActNorm's start)
   and a second, timed one (`step_s`);
3. reports the peak: on CPU the process's peak resident set size
   (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), on GPU the backend's peak
   device allocation (JAX `memory_stats()["peak_bytes_in_use"]`, PyTorch
   `torch.cuda.max_memory_allocated()`, TensorFlow
   `tf.config.experimental.get_memory_info("GPU:0")["peak"]`).

On JAX each row also gives `XLA temp MiB`: the temporary buffers (the
activations kept for the backward pass among them) that XLA plans for the
compiled gradient of the loss, from `memory_analysis()` of
`jax.jit(jax.grad(loss)).lower(...).compile()`, the loss being the mean
negative log-likelihood through `flow.stateless_call`. It is a property of
the compiled program, so it does not depend on the machine's load or on
what else the process holds, unlike the peak RSS.

Modes: `none` (float32, every activation kept), `step` / `level` (the
`remat` option of `ImageFlow`), `mixed` (`dtype="mixed_bfloat16"`) and
`mixed+step`. A subprocess that runs past `--timeout` seconds or fails is
reported as such. The markdown table (appended to `--out`) carries the
command, the machine, the backend, `OMP_NUM_THREADS` and the date.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

MODES = {"none": (None, "float32"), "step": ("step", "float32"),
         "level": ("level", "float32"), "mixed": (None, "mixed_bfloat16"),
         "mixed+step": ("step", "mixed_bfloat16")}


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def gpu_peak_mb(backend):
    """The backend's peak device allocation in MiB, or None on CPU."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        return device.memory_stats()["peak_bytes_in_use"] / 2**20
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def compiled_temp_mb(fn, *args):
    """MiB of temporaries in XLA's plan for `jax.jit(fn)` on `args`."""
    import jax

    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


def xla_temp_mb(flow, x):
    """MiB of temporaries in XLA's plan for the gradient of the mean NLL (JAX)."""
    import jax
    from keras import ops

    def loss(trainable, non_trainable, x):
        log_prob, _ = flow.stateless_call(trainable, non_trainable, x, training=True)
        return -ops.mean(log_prob)

    trainable = [v.value for v in flow.trainable_variables]
    non_trainable = [v.value for v in flow.non_trainable_variables]
    return compiled_temp_mb(jax.grad(loss), trainable, non_trainable,
                            ops.convert_to_tensor(x, "float32"))


def checkpoint_control():
    """XLA's temporaries for the gradient of a plain-JAX chain of 24 dense
    tanh layers (2048 x 512), without and with `jax.checkpoint` on each: a
    control with no Keras and no keras_flows in it."""
    import jax
    import jax.numpy as jnp

    def loss(weights, x, remat):
        layer = jax.checkpoint(lambda w, x: jnp.tanh(x @ w)) if remat else (
            lambda w, x: jnp.tanh(x @ w))
        for w in weights:
            x = layer(w, x)
        return jnp.sum(x ** 2)

    weights = [jnp.full((512, 512), 0.01) for _ in range(24)]
    x = jnp.ones((2048, 512))
    for remat in (False, True):
        temp = compiled_temp_mb(jax.grad(lambda w, x: loss(w, x, remat)), weights, x)
        print(json.dumps({"control": "24 x tanh(x @ w), x 2048 x 512",
                          "jax.checkpoint": remat, "device": jax.devices()[0].platform,
                          "xla_temp_mb": round(temp)}))


def child(args):
    import numpy as np
    import keras

    import keras_flows as kf

    levels, steps, width, batch = (int(v) for v in args.size.split(","))
    remat, dtype = MODES[args.mode]
    flow = kf.Glow(image_shape=(args.image_size, args.image_size, 3), levels=levels,
                   steps_per_level=steps, hidden_channels=width, seed=0, remat=remat,
                   dtype=dtype)
    flow.compile(optimizer=keras.optimizers.Adam(1e-4))
    x = np.random.default_rng(0).integers(0, 256, (batch, args.image_size, args.image_size, 3),
                                          dtype=np.uint8)
    model_mb = current_rss_mb()
    start = time.perf_counter()
    flow.fit(x, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    history = flow.fit(x, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    step = time.perf_counter() - start
    backend = keras.backend.backend()
    gpu = gpu_peak_mb(backend)
    xla = xla_temp_mb(flow, x) if backend == "jax" else None
    print(json.dumps({
        "size": args.size, "mode": args.mode, "parameters": int(flow.count_params()),
        "model_mb": round(model_mb), "peak_rss_mb": round(peak_rss_mb()),
        "gpu_peak_mb": None if gpu is None else round(gpu),
        "xla_temp_mb": None if xla is None else round(xla),
        "first_step_s": round(first, 1), "step_s": round(step, 2),
        "loss": round(float(history.history["loss"][-1]), 3)}))


def machine(backend):
    from keras_flows.utils.backend import device_description

    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) / 2**20
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            f"visible, {total:.0f} GiB RAM; {backend} on {device_description()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["3,8,128,16", "3,16,256,16"],
                        help="L,K,width,batch for each model")
    parser.add_argument("--modes", default="none,step,level,mixed,mixed+step")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", default=None, help="markdown file to append the table to")
    parser.add_argument("--control", action="store_true",
                        help="JAX: only XLA's temporaries of a plain-JAX chain of layers, "
                             "without and with jax.checkpoint")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.control:
        return checkpoint_control()
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"--modes: unknown mode {mode!r}; expected some of {list(MODES)}.")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    rows = []
    for size in args.sizes:
        for mode in modes:
            command = [sys.executable, __file__, "--child", "--size", size, "--mode", mode,
                       "--image-size", str(args.image_size)]
            start = time.perf_counter()
            try:
                run = subprocess.run(command, capture_output=True, text=True,
                                     timeout=args.timeout)
                lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
                row = (json.loads(lines[-1]) if run.returncode == 0 and lines else
                       {"size": size, "mode": mode,
                        "error": (run.stderr.strip().splitlines() or ["?"])[-1][:120]})
            except subprocess.TimeoutExpired:
                row = {"size": size, "mode": mode, "error": f"over {args.timeout:.0f} s"}
            row["wall_s"] = round(time.perf_counter() - start)
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = [
        f"### {backend}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
        f"KERAS_BACKEND={backend} python benchmarks/glow_memory.py "
        f"{' '.join(sys.argv[1:])}`",
        f"Machine: {machine(backend)}; images {args.image_size}x{args.image_size}x3, Adam.",
        "",
        "| L,K,width,batch | mode | parameters | model MiB | peak RSS MiB | "
        "peak GPU MiB | XLA temp MiB | first step s | step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            table.append(f"| {row['size']} | {row['mode']} | failed: {row['error']} "
                         "| | | | | | |")
            continue
        gpu = "-" if row["gpu_peak_mb"] is None else row["gpu_peak_mb"]
        xla = "-" if row["xla_temp_mb"] is None else row["xla_temp_mb"]
        table.append(f"| {row['size']} | {row['mode']} | {row['parameters']:,} | "
                     f"{row['model_mb']} | {row['peak_rss_mb']} | {gpu} | {xla} | "
                     f"{row['first_step_s']} | {row['step_s']} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
