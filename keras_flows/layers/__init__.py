from keras_flows.layers.concat_squash import ConcatSquashConv2D, ConcatSquashDense, VectorField
from keras_flows.layers.conditioners import MLP, ConvNet, ResNet
from keras_flows.layers.conv import Conv2D
from keras_flows.layers.dense import Dense, MaskedDense
from keras_flows.layers.lipschitz import LipSwish, SpectralConv2D, SpectralDense
from keras_flows.layers.made import MADE

__all__ = ["MLP", "ConvNet", "ResNet", "Conv2D", "Dense", "MaskedDense", "MADE",
           "ConcatSquashDense", "ConcatSquashConv2D", "VectorField", "SpectralDense",
           "SpectralConv2D", "LipSwish"]
