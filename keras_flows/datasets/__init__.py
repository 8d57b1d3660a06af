from keras_flows.datasets.toy import TOY_DENSITIES, toy

__all__ = ["toy", "TOY_DENSITIES"]
