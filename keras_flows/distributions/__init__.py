from keras_flows.distributions.base import Distribution
from keras_flows.distributions.logistic import StandardLogistic
from keras_flows.distributions.mixture import GaussianMixture
from keras_flows.distributions.normal import DiagonalNormal, StandardNormal
from keras_flows.distributions.simplex import Dirichlet, UniformSimplex
from keras_flows.distributions.sphere import PowerSpherical, UniformSphere, VonMisesFisher

__all__ = ["Distribution", "StandardNormal", "DiagonalNormal", "GaussianMixture",
           "StandardLogistic"]
__all__ += ["UniformSphere", "VonMisesFisher", "PowerSpherical", "UniformSimplex", "Dirichlet"]
