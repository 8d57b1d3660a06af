"""Data-parallel training gives one device's results: a flow with ActNorm and
BatchNorm trained on two devices (TensorFlow's MirroredStrategy over two
logical CPUs, JAX's DataParallel over two host devices) or by two PyTorch
processes ("ddp" over gloo, started with the variables torchrun sets) reports
the losses of one device on the same global batches, and ends with the same
weights on every replica.

Each engine runs in a fresh subprocess: the devices must be set up before the
backend starts. This file is also that subprocess's script.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import keras

STEPS, BATCH, DIM = 4, 16, 4
# Two devices for the subprocess: read by this file's __main__ (TF), by XLA (JAX).
DEVICES = {"tensorflow": {"KF_TEST_LOGICAL_CPUS": "2"},
           "jax": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}}
ENGINES = {"tensorflow": "mirrored", "jax": "data_parallel", "torch": "ddp"}
RTOL, ATOL = 1e-5, 1e-6   # float32


def _data():
    """Fixed, skewed data with per-feature offsets and scales, so that each
    half of a batch has visibly other statistics than the whole."""
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=(STEPS, 2, BATCH // 2, DIM)) * [1.0, 3.0, 0.5, 2.0] + [0, -4, 2, 1]
    x[:, 1] = 2.0 * x[:, 1] + 1.5
    return x.reshape(STEPS * BATCH, DIM).astype("float32")


def _flow():
    import keras_flows as kf

    keras.utils.set_random_seed(0)
    chain = kf.bijectors.Chain([
        kf.bijectors.ActNorm(), kf.bijectors.AffineCoupling(hidden_units=(8,)),
        kf.bijectors.BatchNorm(momentum=0.5), kf.bijectors.Reverse(),
        kf.bijectors.AffineCoupling(hidden_units=(8,)), kf.bijectors.ActNorm(),
    ])
    flow = kf.Flow(chain, event_shape=(DIM,))
    # Plain SGD: a gradient off by the replica count would show in the weights.
    flow.compile(optimizer=keras.optimizers.SGD(0.05))
    return flow


def _replica_values(variable):
    """The values every replica (TF), device (JAX) or process (PyTorch) holds
    for `variable`."""
    value = variable.value
    if keras.backend.backend() == "tensorflow":   # a tf.distribute MirroredVariable
        return [np.asarray(v) for v in value.values]
    if keras.backend.backend() == "jax":   # a jax.Array
        return [np.asarray(shard.data) for shard in value.addressable_shards]
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, keras.ops.convert_to_numpy(value))
    return gathered


def _worker(distribution):
    """Trains the flow on one device, then under `distribution`; prints both
    runs (the first PyTorch process does)."""
    from keras_flows import distribute

    x = _data()
    batches = np.split(x, STEPS)
    single = _flow()
    start = single.get_weights()
    runs = {"single": {"start": [w.tolist() for w in start],
                       "losses": [float(single.train_on_batch(b)) for b in batches],
                       "weights": [w.tolist() for w in single.get_weights()]}}
    # `fit` over the same batches in order: the epoch's mean loss and the weights.
    single.set_weights(start)
    history = single.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    runs["single"]["fit_loss"] = history.history["loss"][0]
    runs["single"]["fit_weights"] = [w.tolist() for w in single.get_weights()]

    with distribute.scope(distribution):
        flow = _flow()
    flow.set_weights(start)
    # Under "ddp", gradients all-reduced in buckets of one to a few variables here,
    # in one bucket in `fit` below.
    distribute.BUCKET_BYTES, default = 64, distribute.BUCKET_BYTES
    losses = [distribute.mean_over_processes(float(flow.train_on_batch(
        distribute.split_batch(flow, b)))) for b in batches]
    distribute.BUCKET_BYTES = default
    replicas = [_replica_values(v) for v in flow.weights]
    parts = distribute.split_batch(flow, batches[0])
    parts = [np.asarray(v) for v in parts.values] if hasattr(parts, "values") else [parts]
    runs["distributed"] = {
        "losses": losses, "replicas": [len(r) for r in replicas],
        "parts": [p.tolist() for p in parts],
        "weights": [r[0].tolist() for r in replicas],
        "spread": max(float(np.max(np.abs(v - r[0]))) for r in replicas for v in r)}
    # `fit` on the rows of the same global batches that this process trains
    # on (under "ddp"; the whole data elsewhere: the engine splits it).
    index, processes = distribute.process_group()
    mine = np.concatenate([distribute.split_batch(flow, b) for b in batches]) \
        if processes > 1 else x
    flow.set_weights(start)
    history = flow.fit(mine, batch_size=BATCH // processes, epochs=1, shuffle=False, verbose=0)
    runs["distributed"]["fit_loss"] = distribute.mean_over_processes(history.history["loss"][0])
    runs["distributed"]["fit_weights"] = [w.tolist() for w in flow.get_weights()]
    try:
        distribute.split_batch(flow, batches[0][:BATCH - 1])
    except ValueError as error:
        runs["uneven"] = str(error)
    if index == 0:
        print("RESULT " + json.dumps(runs), flush=True)


def _train_worker(distribution, directory):
    """`keras_flows.train` on the tiny Glow config, on one device and under
    `distribution`, on 128 + 16 random images."""
    import pathlib

    from keras_flows import train

    directory = pathlib.Path(directory)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(144, 28, 28, 1), dtype="uint8")
    data = directory / f"images{os.environ.get('RANK', '')}.npz"   # a file per process
    np.savez(data, x_train=images[:128], y_train=np.zeros(128, "int64"),
             x_test=images[128:], y_test=np.zeros(16, "int64"))
    config = pathlib.Path(__file__).with_name("train_tiny.json")
    runs = {}
    # Under "ddp" the second process joins the first for the distributed run only.
    for name in ("none", distribution) if os.environ.get("RANK", "0") == "0" else (distribution,):
        results = train.main([str(config), "--out", str(directory / name), "--data",
                              str(data), "--eval-images", "8",
                              "--epochs", "1", "--distribution", name])
        if os.environ.get("RANK", "0") != "0":
            return
        runs[name] = {"bits_per_dim": results["test_bits_per_dim_midpoint"],
                      "steps": results["optimizer_steps"],
                      "loss": float((directory / name / "log.csv").read_text()
                                    .splitlines()[1].split(",")[1])}
    print("RESULT " + json.dumps(runs), flush=True)


def _run(args, env, tmp_path=None):
    """This file's `__main__` with `args`: one process, or under "ddp" two
    (gloo, with the variables torchrun sets); the first process's RESULT."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    if "ddp" not in args:
        done = subprocess.run([sys.executable, __file__, *args], env=env,
                              capture_output=True, text=True, timeout=300)
        lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
        assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads(lines[-1][len("RESULT "):])
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    # Output goes to files, not pipes: a worker whose unread pipe fills blocks
    # on its write, and its peer then waits on it in a collective forever.
    logs = [(tmp_path / f"rank{r}.out", tmp_path / f"rank{r}.err") for r in range(2)]
    processes = []
    for r, (out, err) in enumerate(logs):
        with open(out, "w") as o, open(err, "w") as e:
            processes.append(subprocess.Popen(
                [sys.executable, __file__, *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=o, stderr=e))
    try:
        for p in processes:
            p.wait(timeout=300)
    finally:
        for p in processes:
            p.kill()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    line = [l for l in outputs[0][0].splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _check(runs):
    single, distributed = runs["single"], runs["distributed"]
    assert set(distributed["replicas"]) == {2}   # two replicas of every weight
    assert distributed["spread"] == 0.0          # identical on both
    backend = keras.backend.backend()
    if backend == "tensorflow":  # each replica got its half of a batch
        np.testing.assert_array_equal(np.concatenate(distributed["parts"]), _data()[:BATCH])
        assert [len(p) for p in distributed["parts"]] == [BATCH // 2] * 2
    if backend == "torch":       # the first process got the first half
        np.testing.assert_array_equal(distributed["parts"][0], _data()[:BATCH // 2])
    if backend != "jax":
        assert runs["uneven"] == (f"A batch of {BATCH - 1} rows cannot be split evenly over "
                                  f"2 replicas; use a batch size divisible by 2.")
    np.testing.assert_allclose(distributed["losses"], single["losses"], rtol=RTOL)
    for key in ("weights", "fit_weights"):
        for a, b in zip(distributed[key], single[key]):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(distributed["fit_loss"], single["fit_loss"], rtol=RTOL)
    assert not np.allclose(np.concatenate([np.ravel(w) for w in single["start"]]),
                           np.concatenate([np.ravel(w) for w in single["weights"]]))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="tf.distribute.MirroredStrategy is TensorFlow's engine")
def test_mirrored_strategy_matches_one_device():
    _check(_run(["mirrored"], {"KERAS_BACKEND": "tensorflow", **DEVICES["tensorflow"]}))


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="keras.distribution.DataParallel is JAX's engine")
def test_jax_data_parallel_matches_one_device():
    _check(_run(["data_parallel"], {"KERAS_BACKEND": "jax", **DEVICES["jax"]}))


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="distribute.scope('ddp') is PyTorch's engine")
def test_torch_ddp_matches_one_process(tmp_path):
    _check(_run(["ddp"], {"KERAS_BACKEND": "torch"}, tmp_path))


def test_train_script_distribution_matches_one_device(tmp_path):
    backend = keras.backend.backend()
    name = ENGINES[backend]
    runs = _run(["train", name, str(tmp_path)],
                {"KERAS_BACKEND": backend, **DEVICES.get(backend, {})}, tmp_path)
    one, many = runs["none"], runs[name]
    assert one["steps"] == many["steps"] == 4
    # The tiny Glow dequantizes with random noise. JAX's DataParallel draws it
    # for the global batch as one device does; under MirroredStrategy and
    # "ddp" every replica draws from the same generator state, so the second
    # replica's noise is not one device's second half: a looser tolerance there.
    rtol = RTOL if backend == "jax" else 1e-4
    np.testing.assert_allclose(many["loss"], one["loss"], rtol=rtol)
    np.testing.assert_allclose(many["bits_per_dim"], one["bits_per_dim"], rtol=rtol)


def test_a_distribution_needs_its_backend(tmp_path):
    from keras_flows import distribute, train

    backend = keras.backend.backend()
    with distribute.scope("none"):
        pass
    with pytest.raises(ValueError, match=r"^Unknown distribution 'horovod'; expected one of "
                                         r"'none', 'mirrored', 'data_parallel', 'ddp'\.$"):
        with distribute.scope("horovod"):
            pass
    images = np.zeros((8, 28, 28, 1), "uint8")
    np.savez(tmp_path / "images.npz", x_train=images, y_train=np.zeros(8, "int64"),
             x_test=images, y_test=np.zeros(8, "int64"))
    config = os.path.join(os.path.dirname(__file__), "train_tiny.json")
    others = [(n, b) for b, n in ENGINES.items() if b != backend]
    assert len(others) == 2
    for name, needed in others:
        message = (f"The distribution '{name}' needs the {needed} backend "
                   f"(KERAS_BACKEND={needed}); this process runs {backend}.")
        with pytest.raises(ValueError) as error:
            with distribute.scope(name):
                pass
        assert str(error.value) == message
        # The training script: from the flag and from the config, one line.
        for option in (["--distribution", name], ["--set", f"training.distribution={name}"]):
            with pytest.raises(SystemExit) as exit:
                train.main([config, "--out", str(tmp_path / "run"), "--data",
                            str(tmp_path / "images.npz"), *option])
            assert str(exit.value) == f"error: {message}"
            assert not (tmp_path / "run" / "backup").exists()


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="'ddp' is PyTorch's engine")
def test_ddp_outside_torchrun_says_what_is_missing(tmp_path, monkeypatch):
    from keras_flows import distribute, train

    for name in distribute.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = ("The distribution 'ddp' runs one process per device under torchrun "
               "(`torchrun --nproc-per-node=N -m keras_flows.train ...`); RANK, MASTER_ADDR, "
               "MASTER_PORT not set.")
    with pytest.raises(ValueError) as error:
        with distribute.scope("ddp"):
            pass
    assert str(error.value) == message
    images = np.zeros((8, 28, 28, 1), "uint8")
    np.savez(tmp_path / "images.npz", x_train=images, y_train=np.zeros(8, "int64"),
             x_test=images, y_test=np.zeros(8, "int64"))
    config = os.path.join(os.path.dirname(__file__), "train_tiny.json")
    with pytest.raises(SystemExit) as exit:
        train.main([config, "--out", str(tmp_path / "run"), "--data",
                    str(tmp_path / "images.npz"), "--distribution", "ddp"])
    assert str(exit.value) == f"error: {message}"
    assert distribute.process_group() == (0, 1)


if __name__ == "__main__":
    if os.environ.get("KF_TEST_LOGICAL_CPUS"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["KF_TEST_LOGICAL_CPUS"]))
    if sys.argv[1] == "train":
        _train_worker(*sys.argv[2:])
    else:
        _worker(sys.argv[1])
    if "RANK" in os.environ:
        # Leave without interpreter finalization: in the full suite a PyTorch
        # worker that had printed its result hung there past the timeout (CI, twice).
        sys.stdout.flush()
        os._exit(0)

