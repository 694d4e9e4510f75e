"""Linear map from image features to the joint space."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="devise")
class L2Normalize(keras.layers.Layer):
    """Scales each vector to unit L2 norm along the last axis."""

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        square_sum = ops.sum(ops.square(inputs), axis=-1, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(square_sum, self.epsilon))

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="devise")
class LinearProjector(keras.layers.Layer):
    """DeViSE's image side: ``M v`` for a CNN feature ``v``, L2-normalised.

    Args:
        output_dim: size of the joint embedding space.
        use_bias: add a bias to the linear map (the paper's ``M`` has none).
        normalize: L2-normalise the output, so dot products are cosines.
        **kwargs: passed to ``keras.layers.Layer``.

    Example:
    ```python
    projector = devise.encoders.LinearProjector(512)
    joint = projector(np.random.rand(8, 4096).astype("float32"))  # (8, 512)
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NIPS 2013.
    """

    def __init__(self, output_dim: int, use_bias: bool = False, normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.use_bias = use_bias
        self.normalize = normalize
        # === Layers ===
        self.dense = keras.layers.Dense(output_dim, use_bias=use_bias, name="projection")
        self.l2 = L2Normalize(name="l2_normalize") if normalize else None

    def build(self, input_shape):
        self.dense.build(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        x = self.dense(inputs)
        return self.l2(x) if self.l2 is not None else x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "output_dim": self.output_dim,
            "use_bias": self.use_bias,
            "normalize": self.normalize,
        }
