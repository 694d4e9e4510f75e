"""Linear map from image features to the joint space."""

from __future__ import annotations

import keras
import numpy as np
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
        dropout: dropout on the input features during training.
        standardize: subtract a per-feature mean and divide by a per-feature
            scale first; the statistics are weights of the layer (set them
            from training features with :meth:`set_feature_statistics`), so
            they are saved with the model.
        **kwargs: passed to ``keras.layers.Layer``.

    Example:
    ```python
    projector = devise.encoders.LinearProjector(512)
    joint = projector(np.random.rand(8, 4096).astype("float32"))  # (8, 512)
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NIPS 2013.
    """

    def __init__(
        self,
        output_dim: int,
        use_bias: bool = False,
        normalize: bool = True,
        dropout: float = 0.0,
        standardize: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.use_bias = use_bias
        self.normalize = normalize
        self.dropout = dropout
        self.standardize = standardize
        # === Layers ===
        # Sublayers take this layer's dtype policy, so a mixed-precision model loads as it was trained.
        self.feature_dropout = keras.layers.Dropout(dropout, name="feature_dropout", dtype=self.dtype_policy)
        self.dense = keras.layers.Dense(output_dim, use_bias=use_bias, name="projection", dtype=self.dtype_policy)
        # float32 even under a mixed-precision policy: unit vectors in float16 lose the cosine's precision.
        self.l2 = L2Normalize(name="l2_normalize", dtype="float32") if normalize else None

    def build(self, input_shape):
        if self.standardize:
            self.feature_mean = self.add_weight(
                shape=(input_shape[-1],), initializer="zeros", trainable=False, name="feature_mean"
            )
            self.feature_scale = self.add_weight(
                shape=(input_shape[-1],), initializer="ones", trainable=False, name="feature_scale"
            )
        self.dense.build(input_shape)
        super().build(input_shape)

    def set_feature_statistics(self, features) -> None:
        """Standardise with the mean and standard deviation of ``features`` ``(N, image_dim)``.

        Constant features get scale 1, so they map to 0 instead of dividing by 0.
        """
        if not self.standardize:
            raise ValueError("this projector was built with standardize=False")
        features = np.asarray(features, np.float64)
        if not self.built:
            self.build(features.shape)
        std = features.std(axis=0)
        self.feature_mean.assign(features.mean(axis=0).astype(np.float32))
        self.feature_scale.assign(np.where(std > 1e-6, std, 1.0).astype(np.float32))

    def call(self, inputs, training=None):
        x = inputs
        if self.standardize:
            x = (x - self.feature_mean) / self.feature_scale
        x = self.feature_dropout(x, training=training)
        x = self.dense(x)
        return self.l2(x) if self.l2 is not None else x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "output_dim": self.output_dim,
            "use_bias": self.use_bias,
            "normalize": self.normalize,
            "dropout": self.dropout,
            "standardize": self.standardize,
        }
