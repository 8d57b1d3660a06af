"""Probability calibration for Keras classifiers, built on the simplex bijectors.

A classifier's softmax outputs `p` (rows on the probability simplex) are mapped
to calibrated probabilities `q` by a bijection of the simplex, fitted by maximum
likelihood of the labels on a held-out split:

| kind | map | parameters |
| --- | --- | --- |
| `"temperature"` | q = softmax(log(p) / T) | T > 0 (Guo et al. 2017) |
| `"scalar"` | q = softmax(a^(-1) log(p) + c) | a > 0, c in R^K |
| `"generalized"` | q = softmax(A log(p) + c) | A (K x K) with A 1 = 1, c in R^K |

The generalized map is matrix (Dirichlet) calibration (Kull et al. 2019).

The maps are `Calibration` (`shift=False` is temperature scaling) and
`GeneralizedCalibration` from `keras_flows.bijectors.simplex`; each starts at
the identity, so a calibrator that has not moved returns `p` unchanged (after
clipping).

```python
cal = keras_flows.calibration.Calibrator(kind="temperature")
cal.fit(val_probs, val_labels)          # a Keras model's softmax outputs, integer labels
test_calibrated = cal(test_probs)
cal.report(test_probs, test_labels)     # NLL, Brier score, ECE before and after
cal.reliability_diagram(test_probs, test_labels, "reliability.png")
```

Metrics (NumPy, float64; `probs` of shape (N, K), integer `labels` of shape (N,)):
- `nll`: mean of -log(max(p_y, epsilon)) in nats, `epsilon = 1e-12`.
- `brier_score`: mean over examples of sum_k (p_k - 1[k = y])^2 (Brier 1950's
  multiclass form, in [0, 2]; 0 for one-hot correct predictions).
- `expected_calibration_error`: sum_b (n_b / N) |acc_b - conf_b| over 15
  equal-width bins of the top-class confidence max_k p_k, bin b holding
  confidences in (b/15, (b+1)/15] (Naeini et al. 2015; Guo et al. 2017).

Before `log`, probabilities are clipped away from 0 and renormalised:
p <- max(p, epsilon) / sum_k max(p_k, epsilon) with `epsilon = 1e-12`
(float32 softmax outputs underflow to exact zeros far out in the tails).

References:
  Guo, Pleiss, Sun, Weinberger 2017, "On calibration of modern neural
  networks", arXiv:1706.04599.
  Kull et al. 2019, "Beyond temperature scaling: obtaining well-calibrated
  multiclass probabilities with Dirichlet calibration", arXiv:1910.12656.
"""

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.simplex import Calibration, GeneralizedCalibration

EPSILON = 1e-12
NUM_BINS = 15
ROW_SUM_TOLERANCE = 1e-3
KINDS = ("temperature", "scalar", "generalized")


def check_probabilities(probs, labels=None):
    """`probs` as a float64 (N, K) array (and `labels` as int64 (N,)), or a ValueError.

    Rows must be finite, non-negative and sum to 1 within 1e-3; labels must be
    integers in [0, K), of shape (N,) or (N, 1) (as `keras.datasets` gives them).
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError("`probs` must have shape (num_examples, num_classes) with "
                         f"num_classes >= 2; got shape {probs.shape}.")
    probs = probs.astype(np.float64)
    if not np.all(np.isfinite(probs)):
        raise ValueError("`probs` holds NaN or infinite values.")
    if np.any(probs < 0):
        raise ValueError(f"`probs` must be non-negative; smallest entry {probs.min()}.")
    sums = probs.sum(axis=1)
    worst = np.max(np.abs(sums - 1.0))
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"Each row of `probs` must sum to 1 (within {ROW_SUM_TOLERANCE}); a row "
            f"sums to {sums[np.argmax(np.abs(sums - 1.0))]}. Pass softmax outputs, "
            "not logits.")
    if labels is None:
        return probs
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"`labels` must have shape ({probs.shape[0]},) to match `probs` "
                         f"of shape {probs.shape}; got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be integer class indices; got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"`labels` must lie in [0, {probs.shape[1]}); got values from "
                         f"{labels.min()} to {labels.max()}.")
    return probs, labels.astype(np.int64)


def clip_probabilities(probs, epsilon=EPSILON):
    """max(p, epsilon) / sum_k max(p_k, epsilon), row by row (NumPy)."""
    probs = np.maximum(np.asarray(probs, dtype=np.float64), epsilon)
    return probs / probs.sum(axis=1, keepdims=True)


def nll(probs, labels, epsilon=EPSILON):
    """Mean negative log-likelihood of the labels, -log(max(p_y, epsilon)), in nats."""
    probs, labels = check_probabilities(probs, labels)
    p_y = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p_y, epsilon))))


def brier_score(probs, labels):
    """Mean over examples of sum_k (p_k - 1[k = y])^2, in [0, 2]."""
    probs, labels = check_probabilities(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_bins(probs, labels, num_bins=NUM_BINS):
    """Per-bin (count, accuracy, mean confidence) over `num_bins` equal-width bins.

    Bin b holds the examples whose top-class confidence max_k p_k lies in
    (b / num_bins, (b + 1) / num_bins] (a confidence of exactly 0 goes to bin 0).
    Empty bins have accuracy and confidence NaN.
    """
    probs, labels = check_probabilities(probs, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=num_bins) / count
        mean_confidence = np.bincount(index, weights=confidence, minlength=num_bins) / count
    return count, accuracy, mean_confidence


def expected_calibration_error(probs, labels, num_bins=NUM_BINS):
    """sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width confidence bins."""
    count, accuracy, confidence = calibration_bins(probs, labels, num_bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(accuracy[filled] - confidence[filled]))
                 / np.sum(count))


def metrics(probs, labels):
    """{"nll", "brier", "ece", "accuracy"} of `probs` against `labels`."""
    probs, labels = check_probabilities(probs, labels)
    return {"nll": nll(probs, labels), "brier": brier_score(probs, labels),
            "ece": expected_calibration_error(probs, labels),
            "accuracy": float(np.mean(probs.argmax(axis=1) == labels))}


def reliability_diagram(panels, labels, path, num_bins=NUM_BINS):
    """Writes a PNG with one reliability diagram per entry of `panels`.

    `panels` maps a title to probabilities (N, K) for the same `labels`. Each
    panel draws the accuracy of each confidence bin as a bar at the bin's
    position, the gap to the bin's mean confidence in red, the diagonal of
    perfect calibration, and the ECE in its title. Returns `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 1.0, num_bins + 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, probs) in zip(axes[0], panels.items()):
        count, accuracy, confidence = calibration_bins(probs, labels, num_bins)
        filled = count > 0
        ece = expected_calibration_error(probs, labels, num_bins)
        width = np.diff(edges)
        ax.bar(edges[:-1][filled], accuracy[filled], width=width[filled], align="edge",
               color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
        ax.bar(edges[:-1][filled], (confidence - accuracy)[filled],
               bottom=accuracy[filled], width=width[filled], align="edge", color="tab:red",
               alpha=0.35, edgecolor="tab:red", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)",
               title=f"{title}\nECE {ece:.4f}, NLL {nll(probs, labels):.3f}")
        ax.set_aspect("equal")
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class _CalibrationModel(keras.Model):
    """Wraps a simplex bijector so that `train_on_batch` fits it: q = forward(p)."""

    def __init__(self, bijector, **kwargs):
        super().__init__(**kwargs)
        self.bijector = bijector

    def call(self, probs):
        return self.bijector.forward(probs)[0]


def _label_nll(labels, q):
    """Mean of -log q_y, with q_y floored at the smallest normal float32."""
    labels = ops.cast(ops.reshape(labels, (-1, 1)), "int32")
    q_y = ops.take_along_axis(q, labels, axis=1)
    return -ops.mean(ops.log(ops.maximum(q_y, 1.2e-38)))


class Calibrator:
    """Fits a calibration map of a classifier's probabilities by maximum likelihood.

    Maps (rows p of shape (N, K), clipped as `clip_probabilities` states):
    - `"temperature"`: q = softmax(log(p) / T), `Calibration(K, shift=False)`;
    - `"scalar"`: q = softmax(a^(-1) log(p) + c), `Calibration(K, shift=True)`;
    - `"generalized"`: q = softmax(A log(p) + c), `GeneralizedCalibration(K)`.

    `fit(probs, labels)` minimises the mean NLL of the labels, -mean log q_y,
    over the whole batch at once with Adam (`learning_rate`), from the identity
    map, for at most `steps` steps. When 20 steps in a row fail to lower the
    best loss so far by `tolerance` nats, the step size is halved; after the
    third halving, the next such plateau stops the fit. Full-batch steps from a
    fixed start make the fit deterministic. Each map is a multinomial logistic
    regression on log(p), so the objective is smooth and well behaved (convex in
    1/T, in (1/a, c) and in (A, c)).

    Args:
      kind: "temperature", "scalar" or "generalized".
      num_classes: K; inferred from the first `fit` if not given.
      steps: the most optimisation steps.
      learning_rate: Adam's step size.
      tolerance: the smallest decrease of the loss (nats) that counts as progress.
      epsilon: floor of the input probabilities before log (then renormalised).
      dtype: the bijector's dtype (float64 on JAX needs `jax_enable_x64`).

    Persisting: `get_config()` / `Calibrator.from_config(config)` hold the
    settings (including `num_classes` once fitted); `save_weights(path)` /
    `load_weights(path)` the fitted map (`path` ending in `.weights.h5`):

        config = cal.get_config(); cal.save_weights("cal.weights.h5")
        again = Calibrator.from_config(config); again.load_weights("cal.weights.h5")
    """

    PATIENCE = 20
    HALVINGS = 3

    def __init__(self, kind="temperature", num_classes=None, steps=1000, learning_rate=0.02,
                 tolerance=1e-6, epsilon=EPSILON, dtype="float32"):
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}.")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be at least 2; got {num_classes}.")
        if int(steps) < 1 or learning_rate <= 0 or tolerance < 0 or not 0 < epsilon < 1:
            raise ValueError("Need steps >= 1, learning_rate > 0, tolerance >= 0 and "
                             f"0 < epsilon < 1; got steps={steps}, learning_rate="
                             f"{learning_rate}, tolerance={tolerance}, epsilon={epsilon}.")
        self.kind = kind
        self.num_classes = None if num_classes is None else int(num_classes)
        self.steps = int(steps)
        self.learning_rate = float(learning_rate)
        self.tolerance = float(tolerance)
        self.epsilon = float(epsilon)
        self.dtype = dtype
        self.bijector = self.model = None
        self.history = []
        if self.num_classes is not None:
            self._build(self.num_classes)

    def _build(self, num_classes):
        if self.kind == "generalized":
            bijector = GeneralizedCalibration(num_classes, dtype=self.dtype)
        else:
            bijector = Calibration(num_classes, shift=self.kind == "scalar", dtype=self.dtype)
        uniform = np.full((1, num_classes), 1.0 / num_classes, dtype=self.dtype)
        self.model = _CalibrationModel(bijector, name=f"{self.kind}_calibration")
        self.model(uniform)
        self.num_classes = num_classes
        self.bijector = bijector

    def _prepare(self, probs, labels=None):
        checked = check_probabilities(probs, labels)
        probs = checked if labels is None else checked[0]
        if self.num_classes is not None and probs.shape[1] != self.num_classes:
            raise ValueError(f"This calibrator has {self.num_classes} classes; `probs` has "
                             f"{probs.shape[1]} columns.")
        clipped = clip_probabilities(probs, self.epsilon).astype(self.dtype)
        return clipped if labels is None else (clipped, checked[1])

    def fit(self, probs, labels):
        """Fits the map to held-out `probs` (N, K) and integer `labels` (N,); returns self.

        Refitting starts again from the identity map.
        """
        probs, labels = self._prepare(probs, labels)
        self._build(probs.shape[1])
        model = self.model
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss=_label_nll)
        self.history = []
        best, since_best, halvings = np.inf, 0, 0
        for _ in range(self.steps):
            loss = float(model.train_on_batch(probs, labels))
            self.history.append(loss)
            if loss < best - self.tolerance:
                best, since_best = loss, 0
                continue
            best, since_best = min(best, loss), since_best + 1
            if since_best == self.PATIENCE:
                if halvings == self.HALVINGS:
                    break
                model.optimizer.learning_rate.assign(model.optimizer.learning_rate * 0.5)
                since_best, halvings = 0, halvings + 1
        return self

    def calibrate(self, probs):
        """Calibrated probabilities q (N, K) as a float64 NumPy array."""
        if self.bijector is None:
            raise ValueError("Call `fit` (or give `num_classes` and `load_weights`) first.")
        q = self.bijector.forward(self._prepare(probs))[0]
        return np.asarray(ops.convert_to_numpy(q), dtype=np.float64)

    __call__ = calibrate

    def report(self, probs, labels):
        """{"before": metrics, "after": metrics} with nll, brier, ece (15 bins), accuracy."""
        return {"before": metrics(probs, labels), "after": metrics(self(probs), labels)}

    def reliability_diagram(self, probs, labels, path):
        """Writes a PNG of the reliability diagrams of `probs` and of `self(probs)`."""
        return reliability_diagram({"uncalibrated": probs, self.kind: self(probs)},
                                   labels, path)

    def get_config(self):
        return {"kind": self.kind, "num_classes": self.num_classes, "steps": self.steps,
                "learning_rate": self.learning_rate, "tolerance": self.tolerance,
                "epsilon": self.epsilon, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save_weights(self, path):
        """Writes the fitted map's weights to `path` (ending in `.weights.h5`)."""
        if self.bijector is None:
            raise ValueError("Nothing to save: the calibrator has not been fitted.")
        self.model.save_weights(path)

    def load_weights(self, path):
        """Reads weights written by `save_weights` (needs `num_classes`)."""
        if self.bijector is None:
            raise ValueError("Give `num_classes` (or use `from_config`) before `load_weights`.")
        self.model.load_weights(path)
