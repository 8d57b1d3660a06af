"""keras_flows: normalizing flows for Keras 3, on TensorFlow, JAX and PyTorch."""

from keras_flows import (anomaly, bijectors, calibration, callbacks, datasets, distribute,
                         distributions, inpainting, layers, metrics, transformers, utils)
from keras_flows.bijectors import *  # noqa: F401,F403
from keras_flows.distributions import (DiagonalNormal, Dirichlet, Distribution, GaussianMixture,
                                       PowerSpherical, StandardLogistic, StandardNormal,
                                       UniformSimplex, UniformSphere, VonMisesFisher)
from keras_flows.models import (FFJORD, IAF, MAF, NICE, NSF, Flow, Glow, ImageFFJORD, ImageFlow,
                                ImageRealNVP, ImageResidualFlow, ManifoldFlow, RealNVP, ResidualFlow)
from keras_flows.inpainting import inpaint
from keras_flows.version import __version__
