from keras_flows.utils.backend import is_concrete
from keras_flows.utils.checks import check_event, check_finite
from keras_flows.utils.images import save_image_grid

__all__ = ["is_concrete", "check_event", "check_finite", "save_image_grid"]
