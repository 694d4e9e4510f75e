"""A replica's view of the global batch, for losses whose negatives are the batch's other items."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class GlobalBatch(NamedTuple):
    """Every replica's rows, and where this replica's own rows sit among them.

    Attributes:
        tensors: the gathered dict, rows in replica order (the global batch's order).
        offset: index of this replica's first row in ``tensors``.
        replicas: replicas in sync (1 outside a strategy).
    """

    tensors: dict
    offset: tf.Tensor | int
    replicas: int


def gather_global_batch(tensors: dict) -> GlobalBatch:
    """All replicas' rows of ``tensors`` (a dict of tensors, batch along axis 0).

    Under a ``tf.distribute`` strategy with several replicas in sync, each
    replica holds a share of the global batch; a loss that takes its
    negatives from the batch would see only that share. This gathers every
    replica's rows, in replica order, so that each replica can score its own
    queries against the whole batch. Shares may differ in size (the last
    batch of an epoch).

    ``all_gather`` has a gradient (the upstream gradients of every replica,
    summed, then this replica's rows), so each replica's loss reaches the
    rows of every other replica, and the sum over replicas of the gradients
    equals the gradient of the loss on the global batch.

    Outside a strategy, in cross-replica context or with one replica, the
    tensors come back as they are, with offset 0.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return GlobalBatch(tensors, 0, 1)
    keys = sorted(tensors)
    gathered = context.all_gather([tensors[k] for k in keys], axis=0)
    sizes = context.all_gather(tf.shape(tensors[keys[0]])[:1], axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    return GlobalBatch(dict(zip(keys, gathered)), offset, context.num_replicas_in_sync)
