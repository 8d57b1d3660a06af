"""Training steps per second under "ddp": local PyTorch processes over gloo.

    python benchmarks/ddp_step.py [--processes 2] [--batch-size 32] [--steps 10]
        [--repeats 3] [--config zoo/glow_cifar10_small.json]

Starts `--processes` copies of itself with the variables `torchrun` sets,
one CPU thread each, as `torchrun --nproc-per-node N` would. Each builds the
config's flow and optimizer as `glow_throughput.py` does, inside
`keras_flows.distribute.scope("ddp")`, and runs `fit` on its share
(`--batch-size / N` rows) of every global batch of uniform random uint8
images: one warm-up epoch of 2 steps, then `--repeats` epochs of `--steps`
steps. Prints one JSON line from the first process: global steps/s (the
median of the repeats, and each), the all-reduces each process starts per
step (counted around `torch.distributed.all_reduce`), the trainable
variables, the device and the date.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def worker(args):
    import keras
    import torch
    import torch.distributed as dist

    import glow_throughput
    from keras_flows import distribute
    from keras_flows.utils.backend import device_description

    with open(args.config) as f:
        config = json.load(f)
    with distribute.scope("ddp"):
        flow = glow_throughput.build(config)
    index, count = distribute.process_group()
    rows = args.batch_size // count
    x = glow_throughput.random_images(rows * args.steps, config["model_config"]["image_shape"])
    flow.fit(x[:2 * rows], batch_size=rows, epochs=1, verbose=0)
    calls = [0]
    all_reduce = dist.all_reduce

    def counted(*a, **k):
        calls[0] += 1
        return all_reduce(*a, **k)

    dist.all_reduce = counted
    rates = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        flow.fit(x, batch_size=rows, epochs=1, verbose=0)
        rates.append(args.steps / (time.perf_counter() - start))
    dist.all_reduce = all_reduce
    if index == 0:
        print(json.dumps({
            "library": "keras_flows", "distribution": "ddp (gloo)", "processes": count,
            "model": config["model"], "config": args.config,
            "trainable_variables": len(flow.trainable_variables),
            "global_batch_size": rows * count, "steps": args.steps,
            "steps_per_s": round(statistics.median(rates), 2),
            "steps_per_s_per_round": [round(r, 2) for r in rates],
            "all_reduces_per_step": calls[0] / (args.steps * args.repeats),
            "threads_per_process": torch.get_num_threads(),
            "keras": keras.__version__, "torch": torch.__version__,
            "device": device_description(), "date": time.strftime("%Y-%m-%d")}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="zoo/glow_cifar10_small.json")
    args = parser.parse_args(argv)
    if args.batch_size % args.processes:
        parser.error(f"--batch-size {args.batch_size} must be divisible by --processes "
                     f"{args.processes}.")
    if "RANK" in os.environ:
        return worker(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": str(args.processes)}
    processes = [subprocess.Popen([sys.executable, __file__, *(argv or sys.argv[1:])],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(args.processes)]
    codes = [p.wait() for p in processes]
    if any(codes):
        raise SystemExit(f"a process exited with {codes}")


if __name__ == "__main__":
    main()
