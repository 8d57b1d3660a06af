"""Bits per dimension, the image-density figure of the flow papers."""

import math

from keras import ops


def bits_per_dim(log_prob, num_dims):
    """-log p(x) / (D log 2), per example.

    With `log_prob` measured on the dequantized [0, 2^n_bits) scale (each
    discrete value owning a bin of width 1), this is the papers' discrete
    figure: a uniform density gives exactly n_bits.
    """
    return -log_prob / (num_dims * math.log(2.0))
