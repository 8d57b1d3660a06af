"""Exact resume of `keras_flows.train`: SIGKILL at random moments and inside a
checkpoint write, a cut by --max-minutes, an unreadable newest checkpoint, a full
disk. A tiny Glow (tests/train_tiny.json: 2 epochs of 4 steps, a checkpoint every
2 steps) on 128 MNIST images; every run is compared with an uninterrupted one."""

import csv
import errno
import io
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_flows import train
from keras_flows.callbacks import Checkpoint

CONFIG = pathlib.Path(__file__).with_name("train_tiny.json")
STEPS = 8

# A training run that, with KILL_IN_CHECKPOINT_WRITE=N, writes half of its Nth
# checkpoint to the temporary file and then SIGKILLs itself.
CHILD = """
import io, os, signal, sys
import numpy as np
writes = int(os.environ.get("KILL_IN_CHECKPOINT_WRITE", 0))
savez = np.savez
def savez_then_die(file, *args, **kwargs):
    global writes
    writes -= 1
    if writes == 0:
        buffer = io.BytesIO()
        savez(buffer, *args, **kwargs)
        file.write(buffer.getvalue()[:buffer.tell() // 2])
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    savez(file, *args, **kwargs)
np.savez = savez_then_die
from keras_flows import train
train.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted run in this process."""
    out = tmp_path_factory.mktemp("reference")
    train.main(command(out, data))
    return out


def command(out, data, *extra):
    return [str(CONFIG), "--out", str(out), "--data", str(data), "--eval-images", "8", *extra]


def newest(out):
    """The state and arrays of the newest checkpoint in OUT/backup."""
    path = sorted((out / "backup").glob("checkpoint-*.npz"))[-1]
    with np.load(path) as f:
        return json.loads(f["state"].item()), [f[f"v{i}"] for i in range(len(f.files) - 1)]


def log_rows(out):
    """log.csv's rows without the wall-clock column."""
    rows = list(csv.DictReader(io.StringIO((out / "log.csv").read_text())))
    return [{k: v for k, v in row.items() if k != "wall_clock_seconds"} for row in rows]


def assert_same_run(out, expected, exact=True):
    """Same final state (every variable: weights, optimizer, metrics, seed
    generators) and the same log rows as `expected`'s."""
    (state, arrays), (expected_state, expected_arrays) = newest(out), newest(expected)
    assert state["step"] == expected_state["step"] == STEPS
    assert len(arrays) == len(expected_arrays)
    for a, b in zip(arrays, expected_arrays):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert log_rows(out) == log_rows(expected)
    assert [row["epoch"] for row in log_rows(out)] == ["0", "1"]


def run(args, kill_after=None, **env):
    """Runs the training command in a new process; with `kill_after`, SIGKILLs it
    that many seconds after it has resumed from a checkpoint. Returns (exit code,
    output)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    process = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    output = ""
    if kill_after is not None:
        for line in process.stdout:
            output += line
            if line.startswith("resuming from "):
                try:
                    process.wait(kill_after)
                except subprocess.TimeoutExpired:
                    process.kill()
                break
    output += process.communicate(timeout=600)[0]
    return process.returncode, output


def test_killed_at_random_moments_resumes_exactly(tmp_path, data, reference):
    # The runs share a JAX compilation cache (else each compiles for seconds), and
    # JAX's float64 switch with this process (tests/conftest.py).
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    if "jax" in sys.modules:
        env["JAX_ENABLE_X64"] = str(sys.modules["jax"].config.jax_enable_x64)
    out, args = tmp_path / "run", command(tmp_path / "run", data)
    # Killed while writing its second checkpoint, the first epoch's (step 4): the
    # half-written temporary file is left beside the checkpoint of step 2.
    code, output = run(args, KILL_IN_CHECKPOINT_WRITE="2", **env)
    assert code == -signal.SIGKILL, output
    names = sorted(p.name for p in (out / "backup").iterdir())
    assert len(names) == 2 and names[0].startswith(".checkpoint-"), names
    assert names[1] == "checkpoint-000000002.npz"
    assert not (out / "log.csv").exists()
    carried = newest(out)[0]["seconds"]   # the killed run's time, kept by its checkpoint
    assert carried > 0
    # Then killed at random moments (within the first half of the time the
    # reference took to train), and run again to the end.
    seconds = json.loads((reference / "results.json").read_text())["train_seconds_now"]
    rng, kills = random.Random(), 0
    while True:
        kill = kills < 2
        code, output = run(args, kill_after=rng.uniform(0, seconds / 2) if kill else None,
                           **env)
        assert "resuming from" in output and "Traceback" not in output, output
        if code == 0:
            break
        assert kill and code == -signal.SIGKILL, output
        kills += 1
    assert kills >= 1
    assert not any(p.name.endswith(".tmp") for p in (out / "backup").iterdir())
    # Bit for bit: each backend is deterministic on CPU.
    assert_same_run(out, reference)
    results = json.loads((out / "results.json").read_text())
    assert results["optimizer_steps"] == STEPS and results["epochs"] == 2
    # The time of earlier runs is counted (they trained the steps kept); both
    # figures are rounded to 0.1 s.
    assert results["train_seconds_total"] >= results["train_seconds_now"] + carried - 0.1


def test_a_cut_epoch_is_not_recorded_and_resumes_exactly(tmp_path, data, reference):
    out = tmp_path / "run"
    results = train.main(command(out, data, "--max-minutes", "1e-9"))
    assert results["optimizer_steps"] == 1 and results["epochs"] == 0
    assert newest(out)[0]["step"] == 1 and newest(out)[0]["rows"] == []
    assert not (out / "log.csv").exists()
    results = train.main(command(out, data))
    assert results["optimizer_steps"] == STEPS and results["epochs_run_now"] == 2
    assert_same_run(out, reference)


def test_an_unreadable_checkpoint_falls_back_to_the_one_before(tmp_path, data, reference,
                                                               capsys):
    out = tmp_path / "run"
    shutil.copytree(reference / "backup", out / "backup")
    bad = out / "backup" / "checkpoint-000000008.npz"
    content = bytearray(bad.read_bytes())
    content[len(content) // 2] ^= 0xFF
    bad.write_bytes(content)
    train.main(command(out, data))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{bad} is unreadable (") for line in lines), lines
    assert f"resuming from {out / 'backup' / 'checkpoint-000000006.npz'} (step 6)" in lines
    assert_same_run(out, reference)


def test_another_models_checkpoint_is_refused(tmp_path, data, reference):
    out = tmp_path / "run"
    shutil.copytree(reference / "backup", out / "backup")
    with pytest.raises(SystemExit, match=r"^error: The checkpoint .*checkpoint-000000008\.npz "
                                         r"holds another model's state"):
        train.main(command(out, data, "--set", "model_config.hidden_channels=6"))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root can mount one, as on CI), else None."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
        tmp_path, data, small_disk, monkeypatch):
    # The disk fills up just before the checkpoint of step 4: on a real tmpfs a
    # file takes all the space left; without one, the checkpoint's write raises
    # ENOSPC.
    out = (small_disk or tmp_path) / "run"
    save = Checkpoint.save

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save_on_a_full_disk(self, model, state):
        if state["step"] == 4 and small_disk is None:
            monkeypatch.setattr(np, "savez", no_space)
        elif state["step"] == 4:
            with open(small_disk / "filler", "wb", buffering=0) as f, \
                    pytest.raises(OSError, match="No space left"):
                while True:
                    f.write(bytes(1 << 16))
        save(self, model, state)

    monkeypatch.setattr(Checkpoint, "save", save_on_a_full_disk)
    with pytest.raises(SystemExit) as stop:
        train.main(command(out, data))
    good, bad = (out / "backup" / f"checkpoint-00000000{step}.npz" for step in (2, 4))
    assert str(stop.value) == (f"error: The disk is full: could not write the checkpoint {bad}; "
                               f"the last good checkpoint, {good}, is intact.")
    assert sorted(p.name for p in (out / "backup").iterdir()) == [good.name]
    with np.load(good) as f:
        assert json.loads(f["state"].item())["step"] == 2 and all(f[k].size for k in f.files)
