from keras_flows.layers.conditioners import MLP

__all__ = ["MLP"]
