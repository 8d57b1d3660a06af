"""Sample-quality figures for generative models: FID, Inception Score and
improved precision/recall, re-exported by `keras_flows.metrics`.

All statistics are computed in float64 NumPy on features that a Keras network
produces batch by batch, on any backend; nothing holds more than one batch of
images in memory.

Features come from `InceptionFeatures`: by default `keras.applications.InceptionV3`
with its ImageNet weights (pool3, 2048-d, for FID and precision/recall; the
1000-class logits for the Inception Score). The papers' figures used the TF-slim
Inception graph of 2015 (`pool_3:0` and a 1008-class softmax, its own resize
inside the graph); keras.applications' network has the same architecture and
training recipe but other weights files and 1000 classes, so figures computed
here are close to but not identical with published ones. Compare models with
figures computed by one implementation only.

References:
  FID: Heusel et al. 2017, arXiv:1706.08500.
  Inception Score: Salimans et al. 2016, arXiv:1606.03498.
  Precision/recall: Kynkäänniemi et al. 2019, arXiv:1904.06991.
"""

import numpy as np
import keras
from keras import ops

_INCEPTION_SIZE = (299, 299)


def _psd_sqrt(matrix):
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})

    computed in float64 without scipy. The standard code (pytorch-fid, TTUR)
    takes `scipy.linalg.sqrtm(S1 @ S2)`, drops its imaginary round-off and adds a
    diagonal offset when the product is singular. Here only the trace of that
    root is needed: with R = S1^{1/2} (symmetric, from `eigh`),
    S1 S2 = R (R S2) and R S2 R = (R S2) R share their eigenvalues (AB and BA
    always do), and R S2 R is symmetric PSD, so those eigenvalues are real and
    >= 0. The principal root of S1 S2 has their square roots as eigenvalues, so
    tr((S1 S2)^{1/2}) = sum(sqrt(eigvalsh(R S2 R))), exact even for singular
    covariances; eigenvalues that round-off makes slightly negative are clipped
    to 0.

    Args:
        mu1, mu2: means, shape (D,) (a scalar for D = 1).
        sigma1, sigma2: covariances, shape (D, D) (a scalar variance for D = 1).

    Returns:
        The squared distance, a Python float (what "FID" reports).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) \
            or sigma2.shape != (dim, dim):
        raise ValueError(f"frechet_distance needs means of shape (D,) and covariances of "
                         f"shape (D, D) with one D; got {mu1.shape}, {sigma1.shape}, "
                         f"{mu2.shape}, {sigma2.shape}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


class InceptionFeatures:
    """Features (and class logits) of images, batch by batch, for FID, IS and P/R.

    Images are (B, H, W, 3) or (B, H, W, 1) (grey, repeated to 3 channels),
    channels last, on the [0, 256) pixel scale (uint8 or the dequantized floats
    a flow samples). Each batch is resized bilinearly without antialiasing, as
    the standard FID code does, to the size the model declares (299x299 for
    InceptionV3, or when it declares none), then scaled to [-1, 1] with
    `keras.applications.inception_v3.preprocess_input`, and passed to the model.

    Args:
        model: None for `keras.applications.InceptionV3` with ImageNet weights,
            giving (pool3 2048-d features, 1000 logits). Otherwise any Keras
            model (or callable) with that interface: images scaled to [-1, 1] in,
            either features alone or a pair (features, logits) out. The logits
            are needed only by `inception_score`.
        batch_size: images per model call.
        verbose: show a `keras.utils.Progbar` while extracting.

    The default weights come through Keras's download (with its hash check) to
    `~/.keras/models/`; where that fails a RuntimeError says so.

    Example:
        features = InceptionFeatures()          # downloads the weights once
        f = features(images)                    # (N, 2048) float64
        logits = features.logits(images)        # (N, 1000) float64
    """

    def __init__(self, model=None, batch_size=50, verbose=False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = _default_inception() if model is None else model
        self.batch_size = int(batch_size)
        self.verbose = verbose
        shape = getattr(self.model, "input_shape", None)
        if isinstance(shape, list):
            shape = shape[0]
        if shape is not None and len(shape) == 4:
            size = tuple(shape[1:3])
            self.image_size = size if None not in size else _INCEPTION_SIZE
            self.channels = shape[3] or 3
        else:
            self.image_size, self.channels = _INCEPTION_SIZE, 3

    def preprocess(self, images):
        """One batch as the model takes it: float32, resized, scaled to [-1, 1]."""
        images = np.asarray(ops.convert_to_numpy(images))
        if images.ndim != 4 or images.shape[-1] not in (1, self.channels):
            raise ValueError(
                f"images must be (batch, height, width, {self.channels}) channels last"
                f"{' or (batch, height, width, 1)' if self.channels != 1 else ''}; "
                f"got shape {images.shape}")
        images = images.astype("float32")
        if images.size and (images.min() < 0 or images.max() > 256):
            raise ValueError(f"images must be on the [0, 256) pixel scale; got values in "
                             f"[{images.min()}, {images.max()}]")
        if images.shape[-1] != self.channels:
            images = np.repeat(images, self.channels, axis=-1)
        if images.shape[1:3] != self.image_size:
            images = ops.convert_to_numpy(ops.image.resize(
                images, self.image_size, interpolation="bilinear", antialias=False,
                data_format="channels_last"))
        return keras.applications.inception_v3.preprocess_input(
            np.asarray(images, "float32"), data_format="channels_last")

    def __call__(self, images):
        """Features, (N, D) float64."""
        return self._extract(images, 0)

    def logits(self, images):
        """Class logits, (N, C) float64; needs a model giving (features, logits)."""
        return self._extract(images, 1)

    def features_and_logits(self, images):
        """(features (N, D), logits (N, C)), float64, from one pass of the model.

        The logits are None for a model that gives features only. Use this
        where FID or precision/recall and the Inception Score are computed on
        the same images, so each image goes through the network once.
        """
        outputs = self._extract(images, None)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def _outputs(self, batch):
        if isinstance(self.model, keras.Model):
            outputs = self.model.predict_on_batch(batch)
        else:
            outputs = self.model(batch)
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    def _extract(self, images, index):
        """Output `index` of the model for every image, or (index None) the first
        two outputs (or the only one), each (N, ...) float64 flattened to (N, -1)."""
        num = len(images)
        if num == 0:
            raise ValueError("no images given")
        bar = keras.utils.Progbar(num, unit_name="image", verbose=1 if self.verbose else 0)
        results = []
        for start in range(0, num, self.batch_size):
            outputs = self._outputs(self.preprocess(images[start:start + self.batch_size]))
            if index is not None and index >= len(outputs):
                raise ValueError("the feature model gives features only; inception_score "
                                 "needs a model that gives (features, logits)")
            chosen = outputs[:2] if index is None else [outputs[index]]
            chosen = [np.asarray(ops.convert_to_numpy(out), np.float64) for out in chosen]
            results.append([out.reshape(out.shape[0], -1) for out in chosen])
            bar.add(chosen[0].shape[0])
        outputs = [np.concatenate(parts) for parts in zip(*results)]
        return outputs if index is None else outputs[0]


def _default_inception():
    """keras.applications.InceptionV3 as one model: (pool3 features, logits)."""
    try:
        net = keras.applications.InceptionV3(include_top=True, weights="imagenet",
                                             classifier_activation=None)
    except Exception as err:
        raise RuntimeError(
            "The ImageNet weights of keras.applications.InceptionV3 could not be "
            f"downloaded ({type(err).__name__}: {err}). Put "
            "inception_v3_weights_tf_dim_ordering_tf_kernels.h5 in ~/.keras/models/ on "
            "a machine without network access, or pass your own feature network: "
            "InceptionFeatures(model=...), a Keras model taking (B, H, W, 3) images "
            "scaled to [-1, 1] and giving features or (features, logits); then "
            "FID(features=...), inception_score(images, model=...).") from err
    return keras.Model(net.inputs, [net.get_layer("avg_pool").output, net.output],
                       name="inception_v3_features")


def _as_features(features):
    if features is None or isinstance(features, InceptionFeatures):
        return features if features is not None else InceptionFeatures()
    return InceptionFeatures(model=features)


class _Moments:
    """Running count, mean and covariance (ddof=1) of feature rows, in float64.

    Sums are taken about a shift (the first batch's mean), which leaves the
    covariance unchanged and keeps the outer-product sums free of cancellation.
    """

    def __init__(self):
        self.count, self.shift, self.total, self.outer = 0, None, None, None

    def add(self, rows):
        rows = np.asarray(rows, np.float64)
        if rows.ndim != 2:
            raise ValueError(f"features must be (batch, dim); got shape {rows.shape}")
        if self.shift is None:
            self.shift = rows.mean(axis=0)
            self.total = np.zeros_like(self.shift)
            self.outer = np.zeros((rows.shape[1], rows.shape[1]))
        elif rows.shape[1] != self.shift.shape[0]:
            raise ValueError(f"features of dimension {rows.shape[1]} after "
                             f"{self.shift.shape[0]}-dimensional ones")
        centred = rows - self.shift
        self.count += rows.shape[0]
        self.total += centred.sum(axis=0)
        self.outer += centred.T @ centred

    def statistics(self):
        mean = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean + self.shift, cov


class FID:
    """Fréchet Inception Distance, accumulated batch by batch.

    `update(real_images)` and `update_fake(fake_images)` may be called any
    number of times; each batch's features go into float64 sums and
    outer-product sums, so 50k images never sit in memory together. `result()`
    gives `frechet_distance` between Gaussians with the feature means and the
    sample covariances (ddof=1, as `np.cov`); the figure depends on the number
    of samples (it is biased upward for small N), so report `num_real` and
    `num_fake` with it.

    Args:
        num_samples: None to use every image given; N to use the first N of each
            side (later images are ignored) and have `result()` refuse fewer.
        features: an `InceptionFeatures`, a Keras model with its interface, or
            None for InceptionV3 with ImageNet weights.
        batch_size, verbose: for the default `InceptionFeatures` (a model passed
            as `features` is wrapped with these).

    Example:
        fid = FID(num_samples=10_000)
        for batch in real_batches: fid.update(batch)
        fid.update_fake(flow.sample(10_000))
        print(fid.result(), fid.num_real, fid.num_fake)
    """

    def __init__(self, num_samples=None, features=None, batch_size=50, verbose=False):
        if num_samples is not None and int(num_samples) < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        self.num_samples = None if num_samples is None else int(num_samples)
        if features is None or not isinstance(features, InceptionFeatures):
            features = InceptionFeatures(model=features, batch_size=batch_size,
                                         verbose=verbose)
        self.features = features
        self.reset()

    def reset(self):
        self._real, self._fake = _Moments(), _Moments()

    @property
    def num_real(self):
        return self._real.count

    @property
    def num_fake(self):
        return self._fake.count

    def update(self, real_images):
        """Add a batch (or a whole array, extracted batch by batch) of real images."""
        self._add(self._real, real_images, images=True)

    def update_fake(self, fake_images):
        """Add generated images."""
        self._add(self._fake, fake_images, images=True)

    def update_features(self, features, fake=False):
        """Add precomputed features, (batch, D), to the real or the fake side."""
        self._add(self._fake if fake else self._real, features, images=False)

    def _add(self, moments, data, images):
        if self.num_samples is not None:
            data = data[:max(self.num_samples - moments.count, 0)]
        if len(data) == 0:
            return
        moments.add(self.features(data) if images else data)

    def result(self):
        """The FID, a Python float."""
        wanted = 2 if self.num_samples is None else self.num_samples
        for name, moments in (("real", self._real), ("fake", self._fake)):
            if moments.count < wanted:
                raise ValueError(f"FID needs at least {wanted} {name} samples, got "
                                 f"{moments.count}")
        if self._real.shift.shape != self._fake.shift.shape:
            raise ValueError(f"real features have dimension {self._real.shift.shape[0]}, "
                             f"fake ones {self._fake.shift.shape[0]}")
        return frechet_distance(*self._real.statistics(), *self._fake.statistics())


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def inception_score(images=None, *, model=None, probs=None, logits=None, splits=10):
    """Inception Score: exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

    Give exactly one of:
        images: (N, H, W, 3) on the [0, 256) scale, classified by `model` (an
            `InceptionFeatures`, a Keras model giving (features, logits), or None
            for InceptionV3 with ImageNet weights);
        probs: class probabilities p(y|x), (N, C), rows summing to 1;
        logits: class logits, (N, C), turned into probabilities by softmax.

    The N rows are cut into `splits` consecutive parts (`np.array_split`, which
    for N divisible by `splits` is the original code's split); in each,
    p(y) is the part's mean of p(y|x), and the score exp(mean KL) is taken
    (0 log 0 = 0). Returns (mean, std) of the part scores (std with ddof=0, as
    the original). It ranges from 1 to C.
    """
    given = [x is not None for x in (images, probs, logits)]
    if sum(given) != 1:
        raise ValueError("inception_score takes exactly one of images, probs= or logits=")
    if images is not None:
        probs = _softmax(_as_features(model).logits(images))
    elif logits is not None:
        probs = _softmax(np.asarray(ops.convert_to_numpy(logits), np.float64))
    else:
        probs = np.asarray(ops.convert_to_numpy(probs), np.float64)
        if probs.ndim == 2 and (np.any(probs < 0) or
                                not np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)):
            raise ValueError("probs must be probabilities: >= 0, rows summing to 1 "
                             "(pass logits= for unnormalised scores)")
    if probs.ndim != 2:
        raise ValueError(f"class probabilities must be (N, C); got shape {probs.shape}")
    if not 1 <= splits <= len(probs):
        raise ValueError(f"splits must be between 1 and the number of samples "
                         f"({len(probs)}), got {splits}")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        safe = np.where(part > 0, part, 1.0)
        kl = np.sum(np.where(part > 0, part * (np.log(safe) - np.log(np.where(
            part > 0, marginal, 1.0))), 0.0), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a, b):
    """Pairwise squared Euclidean distances, (len(a), len(b)), clipped at 0."""
    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _knn_radii(points, k, batch_size):
    """Squared distance from each point to its k-th nearest neighbour, itself excluded."""
    radii = []
    for start in range(0, len(points), batch_size):
        d = _squared_distances(points[start:start + batch_size], points)
        # Each row holds the point's 0 distance to itself, so index k is the k-th neighbour.
        radii.append(np.partition(d, k, axis=1)[:, k])
    return np.concatenate(radii)


def _coverage(queries, references, radii, batch_size):
    """Fraction of queries within the k-NN radius of some reference point."""
    inside = []
    for start in range(0, len(queries), batch_size):
        d = _squared_distances(queries[start:start + batch_size], references)
        inside.append(np.any(d <= radii[None, :], axis=1))
    return float(np.mean(np.concatenate(inside)))


def precision_recall(real_features, fake_features, k=3, batch_size=1000):
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, each ball's
    radius the distance to that point's k-th nearest neighbour in its own set.
    Precision is the fraction of fake points inside the real manifold (quality),
    recall the fraction of real points inside the fake manifold (coverage).
    Distances are computed in float64, `batch_size` rows of the distance matrix
    at a time. The paper uses VGG-16 fc2 features and k=3 with 50k points per
    set; `InceptionFeatures` gives the FID features.

    Args:
        real_features: (N, D). fake_features: (M, D), N and M > k.
        k: the neighbour that sets the radius.

    Returns:
        (precision, recall), Python floats in [0, 1].
    """
    real = np.asarray(ops.convert_to_numpy(real_features), np.float64)
    fake = np.asarray(ops.convert_to_numpy(fake_features), np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs (N, D) and (M, D) features with one D; "
                         f"got {real.shape} and {fake.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, points in (("real", real), ("fake", fake)):
        if len(points) <= k:
            raise ValueError(f"precision_recall with k={k} needs more than {k} {name} "
                             f"samples, got {len(points)}")
    precision = _coverage(fake, real, _knn_radii(real, k, batch_size), batch_size)
    recall = _coverage(real, fake, _knn_radii(fake, k, batch_size), batch_size)
    return precision, recall
