"""Every invertible transform in keras_flows, one family per module."""

from keras_flows.bijectors.autoregressive import MaskedAutoregressive
from keras_flows.bijectors.base import Bijector
from keras_flows.bijectors.composition import Chain, Invert
from keras_flows.bijectors.continuous import ContinuousFlow
from keras_flows.bijectors.conv import InvertibleConv1x1
from keras_flows.bijectors.coupling import AdditiveCoupling, AffineCoupling, Coupling
from keras_flows.bijectors.elementwise import ElementwiseAffine, Sigmoid, Tanh
from keras_flows.bijectors.linear import LULinear
from keras_flows.bijectors.normalization import ActNorm, BatchNorm
from keras_flows.bijectors.permutation import RandomPermutation, Reverse
from keras_flows.bijectors.planar import Planar
from keras_flows.bijectors.multiscale import MultiScale, SplitPrior, TopPrior
from keras_flows.bijectors.preprocessing import Dequantize, LogitTransform, Rescale
from keras_flows.bijectors.radial import Radial
from keras_flows.bijectors.reshape import Squeeze
from keras_flows.bijectors.residual import ResidualBlock
from keras_flows.bijectors.simplex import Calibration, GeneralizedCalibration
from keras_flows.bijectors.sphere import (NormalizedAffine, NormalizedLinear,
                                          NormalizedTranslation)

__all__ = [
    "Bijector", "Chain", "Invert",
    "Coupling", "AdditiveCoupling", "AffineCoupling", "MaskedAutoregressive",
    "ElementwiseAffine", "Sigmoid", "Tanh",
    "LULinear", "InvertibleConv1x1",
    "ActNorm", "BatchNorm",
    "RandomPermutation", "Reverse",
    "Planar", "Radial", "ContinuousFlow", "ResidualBlock",
    "Squeeze", "MultiScale", "SplitPrior", "TopPrior",
    "Dequantize", "Rescale", "LogitTransform",
    "Calibration", "GeneralizedCalibration",
    "NormalizedTranslation", "NormalizedLinear", "NormalizedAffine",
]
