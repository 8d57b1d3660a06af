from keras_flows.models.flow import Flow
from keras_flows.models.nice import NICE
from keras_flows.models.realnvp import RealNVP

__all__ = ["Flow", "NICE", "RealNVP"]
