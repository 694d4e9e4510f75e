"""DeViSE's hinge rank loss over a fixed set of label vectors."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="devise")
class LabelHingeRankLoss(keras.losses.Loss):
    """Hinge rank loss of an image against every wrong training label.

    For an image ``v`` with true label ``y`` and label scores
    ``s_j = t_j . M v`` (``t_j`` the unit-norm label vectors, ``M`` the
    learned map), the loss is::

        sum over j != y of max(0, margin - s_y + s_j)

    summed over every label in the model's label set. Unlike
    :class:`~devise.losses.HingeRankLoss` (negatives are the other
    captions in a batch), the negatives here are the other *labels*, as in
    the paper's ImageNet experiments, and they are all used (the paper
    samples them and stops at the first violation, a speed-up for 1,000
    labels; with few labels the full sum is cheap and exact).

    The model's output ``y_pred`` is the score matrix ``(B, C)`` of each
    image against each label; ``y_true`` holds the index ``(B,)`` (or
    ``(B, 1)``) of each image's label among the ``C``.

    Args:
        margin: the hinge margin (the paper uses 0.1).

    Example:
    ```python
    scores = keras.layers.Dense(num_labels, use_bias=False, trainable=False)  # kernel = label vectors^T
    model.compile(optimizer="adam", loss=devise.zeroshot.LabelHingeRankLoss(margin=0.1))
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
        NIPS 2013, eq. (1).
    """

    def __init__(self, margin: float = 0.1, name: str = "label_hinge_rank_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        is_true = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        positive = ops.sum(y_pred * is_true, axis=-1, keepdims=True)
        cost = ops.relu(self.margin - positive + y_pred) * (1.0 - is_true)
        return ops.sum(cost, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin)
        return config
