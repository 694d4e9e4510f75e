"""The DeViSE hinge rank loss over in-batch negatives."""

from __future__ import annotations

import keras
from keras import ops

_NEGATIVES = ("all", "hardest")
_DIRECTIONS = ("both", "image_to_text", "text_to_image")


@keras.saving.register_keras_serializable(package="devise")
class HingeRankLoss(keras.losses.Loss):
    """Hinge rank loss between matching image and text embeddings.

    For a batch of ``B`` pairs with image embeddings ``v`` and text
    embeddings ``t`` (both L2-normalised, so ``v . t`` is a cosine score),
    every pair ``k`` pays

    * image to text: ``sum_j max(0, margin - v_k . t_k + v_k . t_j)`` over
      captions ``j`` of other images, and
    * text to image: ``sum_i max(0, margin - v_k . t_k + v_i . t_k)`` over
      other images ``i``.

    This is Frome et al.'s loss with the batch's other items as the
    negatives, applied in both retrieval directions. With
    ``negatives="hardest"`` each sum becomes a max (the VSE++ variant, which
    tends to stall with small batches).

    The model's output ``y_pred`` is ``concat([image_emb, text_emb], -1)``
    of shape ``(B, 2 * D)``. ``y_true`` holds an integer group id per pair,
    normally the image index: pairs sharing an id (two captions of one
    image in the same batch) are never used as each other's negatives.

    Args:
        margin: the hinge margin (the paper uses 0.1).
        negatives: ``"all"`` (sum over negatives) or ``"hardest"``.
        directions: ``"both"``, ``"image_to_text"`` or ``"text_to_image"``.

    Example:
    ```python
    loss = devise.losses.HingeRankLoss(margin=0.1)
    model.compile(optimizer="adam", loss=loss)
    model.fit({"image_features": x, "token_ids": ids}, image_index, ...)
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
        NIPS 2013; Faghri et al., "VSE++", BMVC 2018.
    """

    def __init__(
        self,
        margin: float = 0.1,
        negatives: str = "all",
        directions: str = "both",
        name: str = "hinge_rank_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if negatives not in _NEGATIVES:
            raise ValueError(f"negatives must be one of {_NEGATIVES}, got {negatives!r}")
        if directions not in _DIRECTIONS:
            raise ValueError(f"directions must be one of {_DIRECTIONS}, got {directions!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.negatives = negatives
        self.directions = directions

    def call(self, y_true, y_pred):
        image, text = ops.split(y_pred, 2, axis=-1)
        scores = ops.matmul(image, ops.transpose(text))  # [image i, caption j]
        positive = ops.diagonal(scores)
        groups = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        is_negative = ops.cast(ops.not_equal(groups[:, None], groups[None, :]), scores.dtype)

        reduce = ops.max if self.negatives == "hardest" else ops.sum
        loss = ops.zeros_like(positive)
        if self.directions in ("both", "image_to_text"):
            # Row k: image k against every caption j.
            cost = ops.relu(self.margin - positive[:, None] + scores) * is_negative
            loss = loss + reduce(cost, axis=1)
        if self.directions in ("both", "text_to_image"):
            # Column k: caption k against every image i.
            cost = ops.relu(self.margin - positive[None, :] + scores) * is_negative
            loss = loss + reduce(cost, axis=0)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, negatives=self.negatives, directions=self.directions)
        return config
