from keras_flows.datasets.images import IMAGE_DATASETS, load, load_arrays
from keras_flows.datasets.toy import TOY_DENSITIES, toy

__all__ = ["toy", "TOY_DENSITIES", "load", "load_arrays", "IMAGE_DATASETS"]
