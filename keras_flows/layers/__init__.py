from keras_flows.layers.conditioners import MLP, ConvNet

__all__ = ["MLP", "ConvNet"]
