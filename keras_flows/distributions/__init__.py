from keras_flows.distributions.base import Distribution
from keras_flows.distributions.logistic import StandardLogistic
from keras_flows.distributions.mixture import GaussianMixture
from keras_flows.distributions.normal import DiagonalNormal, StandardNormal

__all__ = ["Distribution", "StandardNormal", "DiagonalNormal", "GaussianMixture",
           "StandardLogistic"]
