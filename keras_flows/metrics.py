"""Bits per dimension, the image-density figure of the flow papers."""

import math

import numpy as np
import keras
from keras import ops


def bits_per_dim(log_prob, num_dims):
    """-log p(x) / (D log 2), per example.

    With `log_prob` measured on the dequantized [0, 2^n_bits) scale (each
    discrete value owning a bin of width 1), this is the papers' discrete
    figure: a uniform density gives exactly n_bits.
    """
    return -log_prob / (num_dims * math.log(2.0))


def mean_bits_per_dim(flow, images, labels=None, num_samples=None, batch_size=500):
    """Mean of `flow.bits_per_dim` over `images`, scored `batch_size` at a time.

    `num_samples=None` scores bin midpoints; `num_samples=K` the K-sample
    uniform-dequantization estimate (K=1 is the papers' usual test figure),
    drawn from a fixed seed.
    """
    values = []
    seed = keras.random.SeedGenerator(0)
    for start in range(0, len(images), batch_size):
        context = None if labels is None else labels[start:start + batch_size]
        values.append(ops.convert_to_numpy(flow.bits_per_dim(
            images[start:start + batch_size], context, num_samples=num_samples, seed=seed)))
    return float(np.mean(np.concatenate(values)))


# Sample-quality figures (FID, Inception Score, precision/recall) live in
# `keras_flows.evaluation`, which imports nothing from this module.
from keras_flows.evaluation import (FID, InceptionFeatures, frechet_distance,  # noqa: E402,F401
                                    inception_score, precision_recall)
