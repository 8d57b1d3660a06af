from keras_flows.layers.conditioners import MLP, ConvNet, ResNet

__all__ = ["MLP", "ConvNet", "ResNet"]
