"""keras_flows: normalizing flows for Keras 3, on TensorFlow, JAX and PyTorch."""

from keras_flows import (bijectors, callbacks, datasets, distributions, layers, metrics,
                         transformers, utils)
from keras_flows.bijectors import *  # noqa: F401,F403
from keras_flows.distributions import (DiagonalNormal, Distribution, GaussianMixture,
                                       StandardLogistic, StandardNormal)
from keras_flows.models import (IAF, MAF, NICE, NSF, Flow, Glow, ImageFlow, ImageRealNVP,
                                RealNVP)
from keras_flows.version import __version__
