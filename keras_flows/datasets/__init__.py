from keras_flows.datasets.images import IMAGE_DATASETS, download, load, load_arrays, npz_file
from keras_flows.datasets.toy import TOY_DENSITIES, toy

__all__ = ["toy", "TOY_DENSITIES", "load", "load_arrays", "download", "npz_file", "IMAGE_DATASETS"]
