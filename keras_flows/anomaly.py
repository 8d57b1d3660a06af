"""Anomaly and out-of-distribution detection with a trained flow.

    det = keras_flows.anomaly.Detector(flow, method="typicality")
    det.fit(x_val)                # in-distribution validation data
    det.score(x)                  # higher = more anomalous
    det.predict(x)                # score > threshold (false-positive rate `fpr`)
    det.auroc(x_in, x_out); det.aupr(x_in, x_out)

A flow's likelihood alone is a poor detector: flows trained on CIFAR-10
give SVHN higher likelihood (Nalisnick et al. 2019, "Do Deep Generative
Models Know What They Don't Know?", arXiv:1810.09136), since the likelihood
is dominated by low-level statistics such as smoothness. The other methods
here correct for that in the three published ways.
"""

import io
import math
import zlib

import numpy as np
import keras
from keras import ops

from keras_flows.utils.checks import to_numpy
from keras_flows.utils.inference import BATCH_SIZE

__all__ = ["Detector", "METHODS", "auroc", "aupr", "compressed_bits_per_dim"]

METHODS = ("likelihood", "bits_per_dim", "likelihood_ratio", "typicality", "complexity")
COMPRESSORS = ("png", "zlib")


def auroc(scores_in, scores_out):
    """Area under the ROC curve, out-of-distribution being the positive class.

    AUROC = P(s_out > s_in) + P(s_out = s_in) / 2, the Mann-Whitney U
    statistic of the two score samples divided by n_in * n_out (ties count
    half). 1 separates perfectly, 0.5 is chance.
    """
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def aupr(scores_in, scores_out):
    """Area under the precision-recall curve (average precision),
    out-of-distribution being the positive class.

    AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds in
    decreasing order, P_k and R_k the precision and recall of "score >=
    threshold_k" (the step-wise sum scikit-learn's `average_precision_score`
    computes). Chance level is the share of positives, n_out / (n_in + n_out).
    """
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    scores = np.concatenate([s_in, s_out])
    positive = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each tie group
    tp = np.cumsum(positive)[last]
    precision = tp / (last + 1)
    recall = tp / len(s_out)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _scores(values, name):
    values = np.asarray(to_numpy(values), dtype="float64").reshape(-1)
    if values.size == 0:
        raise ValueError(f"`{name}` is empty: give at least one score.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` holds {int(np.sum(~np.isfinite(values)))} non-finite "
                         "scores; every score must be finite.")
    return values


def _average_ranks(values):
    """Ranks 1..n, tied values sharing their mean rank (scipy's `rankdata`)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    stops = np.r_[starts[1:], len(values)]
    mean_rank = (starts + stops + 1) / 2.0  # mean of ranks start+1 .. stop
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, stops - starts)
    return ranks


def compressed_bits_per_dim(images, compressor="png"):
    """Length of each image under a lossless compressor, in bits per dimension.

    L(x) = 8 * bytes(compress(x)) / D, with `images` of shape (N, H, W, C),
    C in (1, 3), pixel values in [0, 256) (cast to uint8). "png": Pillow's PNG
    encoder at compression level 9 (the whole file, headers included, as
    Serra et al. measure it); "zlib": zlib level 9 on the raw bytes.
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"`compressor` must be 'png' or 'zlib'; got {compressor!r}.")
    x = np.asarray(to_numpy(images))
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError("The complexity score compresses images: expected shape "
                         f"(N, H, W, 1 or 3) with pixels in [0, 256); got {x.shape}.")
    if np.any(x < 0) or np.any(x >= 256):
        raise ValueError("The complexity score compresses 8-bit images: pixel values must "
                         "lie in [0, 256).")
    x = np.floor(x).astype(np.uint8)
    dims = math.prod(x.shape[1:])
    lengths = np.empty(len(x))
    for i, image in enumerate(x):
        if compressor == "zlib":
            lengths[i] = len(zlib.compress(image.tobytes(), 9))
        else:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                buffer, format="PNG", compress_level=9)
            lengths[i] = buffer.tell()
    return 8.0 * lengths / dims


class Detector:
    """Scores inputs by how unlike a flow's training data they are.

    Every score is "higher = more anomalous"; with p the flow's density and
    D the number of dimensions:

    - "likelihood": s(x) = -log p(x) (nats).
    - "bits_per_dim": s(x) = -log p(x) / (D log 2); for image flows their own
      `bits_per_dim` (on the dequantized [0, 2^n_bits) scale).
    - "likelihood_ratio" (Ren et al. 2019, "Likelihood Ratios for
      Out-of-Distribution Detection", arXiv:1906.02845):
      s(x) = -(log p(x) - log p_bg(x)), with `background` a flow on the same
      inputs trained on perturbed data (Ren et al. replace each pixel by a
      uniform random value with probability mu = 0.1 to 0.2), so that it
      captures the background statistics the two share and the ratio keeps
      the semantic part.
    - "typicality" (Nalisnick et al. 2019, "Detecting Out-of-Distribution
      Inputs to Deep Generative Models Using Typicality", arXiv:1906.02994):
      for a batch of M inputs, s = |(1/M) sum_m -log p(x_m) - H|, H the mean
      -log p of the validation data given to `fit`. With `batch_size_m=M > 1`,
      `score` takes N = k M inputs and returns k scores, one per consecutive
      group of M; the threshold is the (1 - fpr) quantile of the scores of
      `bootstrap` batches of M drawn with replacement from the validation
      data. M = 1 scores each input alone.
    - "complexity" (Serra et al. 2020, "Input Complexity and
      Out-of-Distribution Detection with Likelihood-based Generative Models",
      arXiv:1909.11480): s(x) = bits_per_dim(x) - L(x), L(x) the length of x
      under a lossless compressor in bits per dimension
      (`compressed_bits_per_dim`; PNG through Pillow by default, or zlib).
      Images only, pixels in [0, 256).

    `fit(x_val)` scores in-distribution validation data and sets `threshold`
    to their (1 - fpr) quantile, so that `predict` flags about a fraction
    `fpr` of fresh in-distribution inputs. Log-likelihoods come from the
    flow's batched inference (`batch_size` rows at a time, no gradients).

    Args:
        flow: a trained `Flow` (or `ImageFlow`), not conditional.
        method: one of `METHODS`.
        background: the background flow, for (and only for) "likelihood_ratio".
        fpr: target false-positive rate of the threshold, in (0, 1).
        batch_size_m: M, inputs per typicality test (typicality only; 1 by
            default there).
        bootstrap: number of bootstrap batches for the typicality threshold
            (typicality only; 1000 by default there).
        compressor: "png" or "zlib" (complexity only; "png" by default there).
        seed: seed of the bootstrap draws (typicality only; 0 by default).
        batch_size: rows scored at a time.
        verbose: 1 shows a progress bar while scoring.
    """

    def __init__(self, flow, method="likelihood", background=None, fpr=0.05,
                 batch_size_m=None, bootstrap=None, compressor=None, seed=None,
                 batch_size=BATCH_SIZE, verbose=0):
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {', '.join(map(repr, METHODS))}; got "
                             f"{method!r}.")
        if getattr(flow, "context_shape", None) is not None:
            raise ValueError("Detector scores unconditional flows; this flow takes a "
                             "`context`.")
        if method == "likelihood_ratio":
            if background is None:
                raise ValueError("method='likelihood_ratio' needs `background`: a flow on the "
                                 "same inputs trained on perturbed data.")
            if tuple(background.event_shape) != tuple(flow.event_shape):
                raise ValueError(f"`background` models shape {tuple(background.event_shape)}"
                                 f"; the flow models {tuple(flow.event_shape)}.")
        elif background is not None:
            raise ValueError("`background` is used by method='likelihood_ratio' only; got "
                             f"method={method!r}.")
        if not 0.0 < float(fpr) < 1.0:
            raise ValueError(f"`fpr` must lie in (0, 1); got {fpr!r}.")
        for name, value in (("batch_size_m", batch_size_m), ("bootstrap", bootstrap),
                            ("seed", seed)):
            if value is not None and method != "typicality":
                raise ValueError(f"`{name}` is used by method='typicality' only.")
        if compressor is not None and method != "complexity":
            raise ValueError("`compressor` is used by method='complexity' only.")
        if compressor is not None and compressor not in COMPRESSORS:
            raise ValueError(f"`compressor` must be 'png' or 'zlib'; got {compressor!r}.")
        m = 1 if batch_size_m is None else batch_size_m
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ValueError(f"`batch_size_m` must be a positive integer; got {m!r}.")
        bootstrap = 1000 if bootstrap is None else bootstrap
        if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) \
                or bootstrap < 1:
            raise ValueError(f"`bootstrap` must be a positive integer; got {bootstrap!r}.")
        self.flow, self.method, self.background = flow, method, background
        self.fpr = float(fpr)
        self.batch_size_m = int(m)
        self.bootstrap = int(bootstrap)
        self.compressor = compressor or "png"
        self.seed = 0 if seed is None else seed
        self.batch_size = batch_size
        self.verbose = verbose
        self.typical_nll = None  # H, set by `fit` (typicality)
        self.threshold = None

    # -- per-example statistics -------------------------------------------
    def _log_prob(self, flow, x):
        """log p(x) per row (nats), in float64 numpy, with a progress bar."""
        x = np.asarray(to_numpy(x))
        bar = keras.utils.Progbar(len(x), unit_name="input", verbose=self.verbose)
        parts = []
        for start in range(0, len(x), self.batch_size):
            batch = x[start:start + self.batch_size]
            parts.append(np.asarray(ops.convert_to_numpy(
                flow.log_prob(batch, batch_size=self.batch_size)), dtype="float64"))
            bar.add(len(batch))
        return np.concatenate(parts)

    def _per_example(self, x):
        """The per-input score; typicality's is -log p, before the batch mean."""
        x = np.asarray(to_numpy(x))
        if x.ndim < 1 or len(x) == 0:
            raise ValueError("Give a non-empty batch of inputs, shape (N, "
                             f"{', '.join(map(str, self.flow.event_shape))}).")
        if tuple(x.shape[1:]) != tuple(self.flow.event_shape):
            raise ValueError(f"The inputs have shape {tuple(x.shape[1:])} each; the flow "
                             f"models {tuple(self.flow.event_shape)}.")
        dims = math.prod(self.flow.event_shape)
        log_p = self._log_prob(self.flow, x)
        if self.method in ("likelihood", "typicality"):
            return -log_p
        if self.method == "likelihood_ratio":
            return self._log_prob(self.background, x) - log_p
        bits = -log_p / (dims * math.log(2.0))
        if self.method == "bits_per_dim":
            return bits
        return bits - compressed_bits_per_dim(x, self.compressor)

    def _groups(self, values):
        m = self.batch_size_m
        if len(values) % m:
            raise ValueError(f"Typicality with batch_size_m={m} scores groups of {m} "
                             f"inputs: give a multiple of {m}; got {len(values)}.")
        return values.reshape(-1, m).mean(axis=1)

    # -- the public API ---------------------------------------------------
    def fit(self, x):
        """Sets the statistics and `threshold` from in-distribution data `x`.

        Returns the detector. The threshold is the (1 - fpr) quantile of the
        validation scores (of bootstrap batches of M for typicality, M > 1).
        """
        values = self._per_example(x)
        if self.method == "typicality":
            self.typical_nll = float(np.mean(values))
            if self.batch_size_m == 1:
                scores = np.abs(values - self.typical_nll)
            else:
                rng = np.random.default_rng(self.seed)
                draws = rng.integers(0, len(values), size=(self.bootstrap, self.batch_size_m))
                scores = np.abs(values[draws].mean(axis=1) - self.typical_nll)
        else:
            scores = values
        self.threshold = float(np.quantile(scores, 1.0 - self.fpr))
        return self

    def score(self, x):
        """Anomaly scores, higher = more anomalous: one per input (one per
        group of M consecutive inputs for typicality with M > 1)."""
        values = self._per_example(x)
        if self.method != "typicality":
            return values
        if self.typical_nll is None:
            raise ValueError("Typicality compares with in-distribution data: call "
                             "`fit(x_val)` first.")
        return np.abs(self._groups(values) - self.typical_nll)

    def predict(self, x):
        """True where `score(x) > threshold` (anomalous)."""
        if self.threshold is None:
            raise ValueError("The threshold comes from in-distribution data: call "
                             "`fit(x_val)` first.")
        return self.score(x) > self.threshold

    def auroc(self, x_in, x_out):
        """AUROC of the scores of in- against out-of-distribution inputs."""
        return auroc(self.score(x_in), self.score(x_out))

    def aupr(self, x_in, x_out):
        """AUPR (average precision), out-of-distribution the positive class."""
        return aupr(self.score(x_in), self.score(x_out))
