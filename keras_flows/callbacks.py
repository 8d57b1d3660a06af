"""Training helpers for long runs: warmup, NaN guard, time budget, sample grids,
atomic checkpoints for exact resume."""

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import time
import zipfile

import numpy as np
import keras
from keras import ops

from keras_flows.metrics import mean_bits_per_dim


@keras.saving.register_keras_serializable(package="keras_flows")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `learning_rate` over `warmup_steps`, then constant.

    lr(t) = learning_rate * min(1, (t + 1) / warmup_steps)
    """

    def __init__(self, learning_rate, warmup_steps):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        fraction = (ops.cast(step, "float32") + 1.0) / max(self.warmup_steps, 1)
        return self.learning_rate * ops.minimum(1.0, fraction)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


class NaNGuard(keras.callbacks.Callback):
    """Stops training with a clear error as soon as the loss is NaN or inf."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"The loss became {loss} at batch {batch}. Lower the learning rate, "
                "add warmup or gradient clipping (global_clipnorm), or check the data; the "
                "last checkpoint is unaffected.")


class TimeBudget(keras.callbacks.Callback):
    """Stops training after `seconds` of wall-clock time (checked every batch)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = float(seconds)

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


class SampleGrid(keras.callbacks.Callback):
    """After each epoch: writes a PNG of samples and logs `test_bits_per_dim`
    (at bin midpoints).

    Args:
        directory: where `samples_epoch_{N}.png` go.
        test_images: uint8 images to score (a few thousand is plenty).
        num_samples: images in the grid.
        temperature: sampling temperature.
        labels: for a class-conditional flow, labels of `test_images`.
    """

    def __init__(self, directory, test_images, num_samples=36, temperature=0.7,
                 labels=None, seed=0):
        super().__init__()
        self.directory = directory
        self.test_images = test_images
        self.labels = labels
        self.num_samples = num_samples
        self.temperature = temperature
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        from keras_flows.utils.images import save_image_grid

        os.makedirs(self.directory, exist_ok=True)
        flow = self.model
        context = None
        if getattr(flow, "num_classes", None):
            context = np.arange(self.num_samples) % flow.num_classes
        samples = flow.sample(self.num_samples, context=context,
                              temperature=self.temperature, seed=self.seed)
        save_image_grid(samples, os.path.join(self.directory, f"samples_epoch_{epoch + 1}.png"))
        if logs is not None:
            logs["test_bits_per_dim"] = mean_bits_per_dim(flow, self.test_images, self.labels)


class Checkpoint:
    """Atomic checkpoints of a model's whole training state, for exact resume.

    `save(model, state)` writes `DIRECTORY/checkpoint-{step:09d}.npz`, where
    `step = state["step"]`: every variable of the model (weights, non-trainable
    state such as ActNorm's, the `SeedGenerator` states), of its optimizer and
    of its compiled metrics, and `state`, a JSON-able dict (the data position,
    log rows, totals). It writes a temporary file in the same folder, flushes
    and fsyncs it, renames it and fsyncs the folder; only then does it delete
    the checkpoints before the previous one. A kill at any moment thus leaves
    the last complete checkpoint in place. When the disk is full it deletes
    the partial file and raises an `OSError` that names the file and the last
    good checkpoint.

    `restore(model)` loads the newest checkpoint that reads back whole (its
    zip CRCs checked), prints which, prints one line for each newer one that
    is unreadable, and returns its `state`; None when there is none (or none
    readable, which it says). A
    checkpoint whose variables do not fit the model (count, shapes, dtypes)
    raises `ValueError`. The model must be compiled; its optimizer is built
    if it is not.

    Example:
        >>> checkpoint = Checkpoint("run/backup")
        >>> state = checkpoint.restore(flow) or {"step": 0}
        >>> ...  # train, then
        >>> checkpoint.save(flow, {"step": 100})
    """

    PATTERN = re.compile(r"checkpoint-(\d+)\.npz")

    def __init__(self, directory):
        self.directory = directory
        self.last = None  # the newest complete checkpoint: kept by the next save

    def _checkpoints(self):
        """Checkpoint files, newest (highest step) first."""
        if not os.path.isdir(self.directory):
            return []
        found = [(int(m.group(1)), name) for name in os.listdir(self.directory)
                 if (m := self.PATTERN.fullmatch(name))]
        return [os.path.join(self.directory, name) for _, name in sorted(found, reverse=True)]

    def save(self, model, state):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"checkpoint-{int(state['step']):09d}.npz")
        arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(_state_variables(model))}
        temporary = None
        try:
            fd, temporary = tempfile.mkstemp(".tmp", ".checkpoint-", self.directory)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, state=np.array(json.dumps(state)), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
            _fsync_directory(self.directory)
        except BaseException as error:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.remove(temporary)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                kept = (f"the last good checkpoint, {self.last}, is intact" if self.last
                        else "no checkpoint was written before")
                raise OSError(f"The disk is full: could not write the checkpoint {path}; "
                              f"{kept}.") from error
            raise
        for old in self._checkpoints():
            if old not in (path, self.last):
                os.remove(old)
        self.last = path

    def restore(self, model):
        with contextlib.suppress(OSError):
            for name in os.listdir(self.directory):
                if name.startswith(".checkpoint-") and name.endswith(".tmp"):
                    os.remove(os.path.join(self.directory, name))  # left by a kill
        skipped = False
        for path in self._checkpoints():
            try:
                with np.load(path, allow_pickle=False) as f:
                    state = json.loads(f["state"].item())
                    arrays = [f[f"v{i}"] for i in range(len(f.files) - 1)]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                print(f"{path} is unreadable ({reason}); trying the one before it")
                skipped = True
                continue
            variables = _state_variables(model)
            fits = len(arrays) == len(variables) and all(
                a.shape == tuple(v.shape) and a.dtype == v.dtype
                for a, v in zip(arrays, variables))
            if not fits:
                raise ValueError(f"The checkpoint {path} holds another model's state (its "
                                 f"variables differ from this model's); train into a new "
                                 f"folder or delete {self.directory}.")
            for v, a in zip(variables, arrays):
                v.assign(a)
            self.last = path
            print(f"resuming from {path} (step {state['step']})")
            return state
        if skipped:
            print(f"no readable checkpoint in {self.directory}: starting afresh")
        return None


def _state_variables(model):
    """Every variable of `model`'s training state, in a fixed order."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    seen, variables = set(), []
    for v in (*model.variables, *model.optimizer.variables, *model.metrics_variables):
        if id(v) not in seen:
            seen.add(id(v))
            variables.append(v)
    return variables


def _fsync_directory(directory):
    """Makes a rename in `directory` durable (POSIX; a no-op elsewhere)."""
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
