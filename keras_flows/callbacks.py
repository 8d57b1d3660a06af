"""Training helpers for long runs: warmup, NaN guard, time budget, sample grids."""

import math
import os
import time

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
                "add warmup or gradient clipping (clipnorm), or check the data; the "
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
    (and `wall_clock_seconds` since training began).

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

    def on_train_begin(self, logs=None):
        self.start = time.time()

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
        value = mean_bits_per_dim(flow, self.test_images, self.labels)
        if logs is not None:
            logs["test_bits_per_dim"] = value
            logs["wall_clock_seconds"] = round(time.time() - self.start, 1)
        print(f" - test bits/dim {value:.4f}")


class Checkpoint(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves at every epoch's end.

    Saves the weights, optimizer state and epoch every `save_freq` steps and
    after each epoch; a new `fit` with the same `backup_dir` resumes from the
    last save. From an epoch's end the resume is exact; after an interruption
    mid-epoch, training continues from the last step checkpoint's weights and
    optimizer state, re-reading that epoch's data from its start.
    """

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()
