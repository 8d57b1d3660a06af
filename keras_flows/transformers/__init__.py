"""Elementwise monotone maps with parameters, shared by every structure."""

from keras_flows.transformers.affine import Additive, Affine
from keras_flows.transformers.base import Transformer
from keras_flows.transformers.spline import RationalQuadraticSpline

__all__ = ["Transformer", "Additive", "Affine", "RationalQuadraticSpline"]
