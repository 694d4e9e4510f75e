"""The DeViSE hinge rank loss over in-batch negatives."""

from __future__ import annotations

import keras
from keras import ops

from devise.losses.global_batch import gather_global_batch

_NEGATIVES = ("all", "hardest", "sampled")
_DIRECTIONS = ("both", "image_to_text", "text_to_image")


@keras.saving.register_keras_serializable(package="devise")
class HingeRankLoss(keras.losses.Loss):
    """Hinge rank loss between matching image and text embeddings.

    For a batch of ``B`` pairs with image embeddings ``v`` and text
    embeddings ``t`` (both L2-normalised, so ``v . t`` is a cosine score),
    every pair ``k`` pays, over its negatives,

    * image to text: ``max(0, margin - v_k . t_k + v_k . t_j)`` for each
      negative caption ``j``, and
    * text to image: ``max(0, margin - v_k . t_k + v_i . t_k)`` for each
      negative image ``i``,

    combined per query by ``negatives``:

    * ``"all"``: the sum (Frome et al.'s loss with the batch's other items
      as the negatives, in both retrieval directions);
    * ``"hardest"``: the max (the VSE++ "max violation" variant, which tends
      to stall with small batches);
    * ``"sampled"``: the paper's own variant, which visits the negatives in
      a random order and stops the sum at the first one that violates the
      margin, so each query pays the hinge of exactly one violating
      negative (0 if none violates). The first violator of a uniformly
      random order is a uniformly random violator, so this is computed
      without a loop: each (query, negative) gets a uniform random key,
      keys of non-violators are masked out and ``argmax`` picks the one
      violator that is paid for. Its expected value is the mean hinge over
      the violators. Keys come from a ``keras.random.SeedGenerator`` held by
      the loss, so ``seed`` makes a run repeatable; each direction draws its
      own keys.

    Under a ``tf.distribute`` strategy (``fit`` runs the loss once per
    replica, on the replica's share of the batch), the negatives still span
    the global batch: each replica gathers every replica's embeddings and ids
    and scores its own queries against all of them, so N replicas give the
    one-device loss and gradients on the same global batch, for every
    ``negatives`` (``"sampled"`` included: every replica draws the keys of
    the whole batch from the same seed state and keeps its own rows).

    Inputs:

    * ``y_pred``: a dict ``{"image": (B, D), "text": (B, D)}`` of unit
      vectors; row ``k`` of both is a matching pair.
    * ``y_true``: integer group ids, either ``(B,)`` (or ``(B, 1)``) = the
      image id of each pair, or ``(B, 2)`` = ``[image id, caption id]``
      where the caption id is equal for pairs whose caption strings are
      identical. Pairs ``k`` and ``j`` are each other's negatives only if
      they differ in every id given: two captions of one image are never
      negatives, nor are two images that both carry the caption "a dog".
      Keras casts ``y_true`` to the loss dtype (float32) before
      comparing, so ids must stay below ``2**24``; use ids local to the
      dataset (image and caption-group indices), not hashes.

    Args:
        margin: the hinge margin (the paper uses 0.1).
        negatives: ``"all"``, ``"hardest"`` or ``"sampled"``.
        directions: ``"both"``, ``"image_to_text"`` or ``"text_to_image"``.
        seed: seed of the random order for ``negatives="sampled"``
            (``None``: a random seed); ignored otherwise.

    Example:
    ```python
    loss = devise.losses.HingeRankLoss(margin=0.1, negatives="sampled", seed=0)
    image = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    text = keras.ops.normalize(keras.random.normal((8, 16)), axis=-1)
    ids = np.stack([np.arange(8), np.arange(8)], axis=1)  # [image id, caption id]
    value = loss(ids, {"image": image, "text": text})
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
        seed: int | None = None,
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
        self.seed = seed
        # Only the sampled variant holds random state (a variable), so the
        # other two stay stateless.
        self.seed_generator = keras.random.SeedGenerator(seed) if negatives == "sampled" else None

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, dict) or set(y_pred) != {"image", "text"}:
            raise ValueError(
                'HingeRankLoss expects y_pred = {"image": (B, D), "text": (B, D)}, '
                f"got {type(y_pred).__name__}" + (f" with keys {sorted(y_pred)}" if isinstance(y_pred, dict) else "")
            )
        image, text = y_pred["image"], y_pred["text"]
        ids = self._ids(y_true)
        # Under a distribution strategy each replica holds a share of the batch: its queries meet
        # the candidates of the whole global batch, so N replicas sum to the one-device loss.
        batch, offset, replicas = gather_global_batch({"image": image, "text": text, "ids": ids})
        positive = ops.sum(image * text, axis=1)
        is_negative = ops.cast(self._negative_mask(ids, batch["ids"]), image.dtype)  # [query k, candidate j]

        loss = ops.zeros_like(positive)
        if self.directions in ("both", "image_to_text"):
            # Row k: image k against every caption j.
            cost = ops.relu(self.margin - positive[:, None] + ops.matmul(image, ops.transpose(batch["text"])))
            loss = loss + self._reduce(cost * is_negative, offset)
        if self.directions in ("both", "text_to_image"):
            # Row k: caption k against every image i.
            cost = ops.relu(self.margin - positive[:, None] + ops.matmul(text, ops.transpose(batch["image"])))
            loss = loss + self._reduce(cost * is_negative, offset)
        if replicas > 1 and self.reduction in ("sum_over_batch_size", "mean"):
            # Keras averages each replica's rows, then divides by the replicas: the global mean only
            # if the shares are equal. Rows weighted by local * replicas / global size keep an
            # uneven last batch right too (the weight is 1 for equal shares).
            local, size = ops.shape(ids)[0], ops.shape(batch["ids"])[0]
            loss = loss * ops.cast(local * replicas, loss.dtype) / ops.cast(size, loss.dtype)
        return loss

    def _ids(self, y_true):
        """``y_true`` as ``(B, n_ids)``."""
        rank = len(y_true.shape)
        width = y_true.shape[-1] if rank == 2 else None
        if rank not in (1, 2) or width not in (None, 1, 2):
            raise ValueError(
                "HingeRankLoss expects y_true of shape (B,) = image ids or (B, 2) = "
                f"[image id, caption id], got shape {tuple(y_true.shape)}"
            )
        return ops.reshape(y_true, (-1, 1)) if rank == 1 else y_true

    @staticmethod
    def _negative_mask(query_ids, candidate_ids):
        """``(B_query, B_candidate)`` bool: candidate ``j`` is a negative of query ``k`` (differs in every id)."""
        differs = ops.not_equal(query_ids[:, None, :], candidate_ids[None, :, :])
        return ops.all(differs, axis=-1)

    def _reduce(self, cost, offset):
        """One value per row of ``cost`` (0 where not a violating negative).

        ``cost`` holds this replica's queries (rows) against the global
        batch (columns); its first row is row ``offset`` of the global batch.
        """
        if self.negatives == "all":
            return ops.sum(cost, axis=1)
        if self.negatives == "hardest":
            return ops.max(cost, axis=1)
        # sampled: a uniformly random violator per row. Keys are in [0, 1),
        # non-violators get -1; a row without violators picks a zero-cost
        # entry, so it pays 0. Every replica draws the keys of the whole
        # global batch from the same seed state and keeps its own rows, so
        # a query meets the same keys whatever the number of replicas.
        candidates = ops.shape(cost)[1]
        keys = keras.random.uniform((candidates, candidates), seed=self.seed_generator, dtype=cost.dtype)
        keys = keys[offset : offset + ops.shape(cost)[0]]
        keys = ops.where(cost > 0, keys, -ops.ones_like(keys))
        chosen = ops.one_hot(ops.argmax(keys, axis=1), candidates, dtype=cost.dtype)
        return ops.sum(cost * chosen, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, negatives=self.negatives, directions=self.directions, seed=self.seed)
        return config
