from keras_flows.models.ffjord import FFJORD, ImageFFJORD
from keras_flows.models.flow import Flow
from keras_flows.models.glow import Glow
from keras_flows.models.image_flow import ImageFlow
from keras_flows.models.maf import IAF, MAF
from keras_flows.models.manifold import ManifoldFlow
from keras_flows.models.nice import NICE
from keras_flows.models.nsf import NSF
from keras_flows.models.realnvp import ImageRealNVP, RealNVP
from keras_flows.models.residual_flow import ImageResidualFlow, ResidualFlow

__all__ = ["Flow", "NICE", "RealNVP", "MAF", "IAF", "NSF", "FFJORD", "ImageFlow", "Glow",
           "ImageRealNVP", "ManifoldFlow", "ResidualFlow",
           "ImageResidualFlow", "ImageFFJORD"]
