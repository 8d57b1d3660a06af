"""A 2-D convolution layer without PyTorch's layout copies."""

import keras

from keras_flows.utils.backend import conv2d


@keras.saving.register_keras_serializable(package="keras_flows")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D`, with the same arguments, variables and weight
    layout, whose stride-1, undilated, single-group channels-last
    convolution runs through `utils.backend.conv2d`: on PyTorch that skips
    the four layout copies Keras 3.15's `ops.conv` makes per call and
    gradient. Other configurations, and the other backends, run Keras's
    own convolution.
    """

    def convolution_op(self, inputs, kernel):
        if (tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
                and self.groups == 1 and self.data_format == "channels_last"):
            return conv2d(inputs, kernel, padding=self.padding)
        return super().convolution_op(inputs, kernel)
