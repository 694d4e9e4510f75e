"""``trainer.strategy``: the ``tf.distribute`` strategy, which worker writes, and each replica's share of a batch.

Multi-worker training follows Keras' own pattern (the Keras multi-worker
guide): every worker runs the same program on the same data, with the same
seed, so every worker builds the same model, sees the same global batches in
the same order and ends with the same weights; only the chief (``TF_CONFIG``
task ``chief``, or worker 0 without one) writes the run directory, and the
other workers write theirs to a temporary folder removed at the end.

Why the batches are sharded here rather than by ``tf.data``'s auto-shard
(what ``fit`` does with a plain dataset): the trainer's batches are formed
inside a ``flat_map`` (one reshuffled pass per epoch, see
:meth:`devise.training.Trainer.fit`), where the auto-shard rewrite finds no
batch to split; and the loss's negatives span the global batch
(:func:`devise.losses.gather_global_batch`), so each replica must hold a
contiguous share of the very batch one process would train on, in replica
order. :func:`replica_batches` gives exactly that, and the run then equals
the one-process run on the same global batch up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from devise.errors import DeviseError

STRATEGIES = ("off", "mirrored", "multi_worker_mirrored")


def make_strategy(name: str):
    """The ``tf.distribute`` strategy named by ``trainer.strategy``.

    ``multi_worker_mirrored`` reads ``TF_CONFIG`` (no ``TF_CONFIG``: one
    worker, this process) and must be made before the process runs any
    TensorFlow operation: TensorFlow configures collective operations when
    it starts its runtime.

    Raises:
        DeviseError: an unknown name, or TensorFlow already ran in this process.
    """
    if name == "off":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise DeviseError(
                f"trainer.strategy multi_worker_mirrored: TensorFlow cannot start it in this process ({exc}); "
                "start each worker in a fresh process (devise-train, or devise.Trainer(config).run() before any "
                "other TensorFlow call) with its TF_CONFIG set, see docs/training.md"
            ) from None
    raise DeviseError(f"trainer.strategy: unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")


def describe_devices(strategy) -> str:
    """Where training runs, in one line: the GPUs TensorFlow sees (or that it sees none) and the replicas.

    Said in every run's log because a GPU TensorFlow cannot use (no driver,
    a CPU-only build) leaves only a line in TensorFlow's start-up chatter,
    which the console commands drop (:mod:`devise.cli.tensorflow_start`).
    """
    gpus = [device.name.split("device:")[-1] for device in tf.config.list_logical_devices("GPU")]
    where = (
        f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} ({', '.join(gpus)})"
        if gpus
        else "CPU (TensorFlow sees no GPU)"
    )
    replicas = strategy.num_replicas_in_sync
    return f"{where}; {replicas} replica{'s' if replicas != 1 else ''} ({type(strategy).__name__})"


def is_multi_worker(strategy) -> bool:
    """Whether ``strategy`` spans several worker processes."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def is_chief(strategy) -> bool:
    """Whether this process writes files: always, except on a non-chief worker of a multi-worker strategy."""
    return bool(strategy.extended.should_checkpoint) if is_multi_worker(strategy) else True


def worker_name(strategy) -> str:
    """``"worker 1"`` (as ``TF_CONFIG`` names this task), for messages."""
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}"


def gather_from_workers(strategy, value: float) -> np.ndarray:
    """``value`` from every replica of every worker (a collective: every worker must call it, in the same order).

    Also a barrier: no worker returns before every worker has called it.
    """

    @tf.function
    def gather():
        per_replica = strategy.run(lambda: tf.constant([value], tf.float64))
        return strategy.gather(per_replica, axis=0)

    return gather().numpy()


def replica_batches(rows: tf.data.Dataset, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """This worker's replicas' shares of every global batch of ``rows`` (a dataset of row-index vectors).

    Replica ``r`` of ``R`` (in the strategy's order: worker by worker)
    gets the contiguous rows ``[r b // R + min(r, b % R), ...)`` of a batch
    of ``b`` rows, the first ``b % R`` replicas one row more, as
    ``MirroredStrategy`` splits an uneven batch. Each worker's pipeline
    yields its local replicas' shares one after the other, as
    ``distribute_datasets_from_function`` hands them out.
    """
    replicas = context.num_replicas_in_sync
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def shares(batch):
        n = tf.shape(batch, out_type=tf.int64)[0]
        base, extra = n // replicas, n % replicas
        ids = tf.range(first, first + local, dtype=tf.int64)
        begins = ids * base + tf.minimum(ids, extra)
        sizes = base + tf.cast(ids < extra, tf.int64)
        return tf.data.Dataset.from_tensor_slices((begins, sizes)).map(lambda b, s: batch[b : b + s])

    return rows.flat_map(shares)


@contextlib.contextmanager
def chief_first(strategy) -> Iterator[None]:
    """The chief runs the block first; the other workers of a multi-worker strategy run it once it is done.

    For work that writes shared files (downloads, generated data, the
    feature cache): two processes never write them at once. The chief lets
    the others go when its block ends, even with an error (they then meet
    the same problem and report it themselves). Elsewhere, a plain block.
    """
    if not is_multi_worker(strategy):
        yield
        return
    chief = is_chief(strategy)
    if not chief:
        gather_from_workers(strategy, 0.0)
    try:
        yield
    finally:
        if chief:
            gather_from_workers(strategy, 0.0)


def clip_after_summing(optimizer, strategy) -> None:
    """Make ``optimizer`` clip the gradient summed over replicas, as one device clips the global batch's.

    Keras 3 clips each replica's share of the gradient (``clipnorm``,
    ``global_clipnorm``, ``clipvalue``) before the optimizer sums the shares
    across replicas, so whenever clipping bites, N replicas take another step
    than one device on the same global batch. With several replicas in sync
    this optimizer sums first (an all-reduce), clips the sum, and hands each
    replica ``1 / N`` of the clipped sum, which the optimizer's own sum makes
    whole again: one extra all-reduce of the gradients per step, and only when
    clipping is configured. It overrides the instance's ``_clip_gradients``
    (Keras' hook between the gradients and the update), not the class, so the
    saved model's optimizer is the plain Keras one.
    """
    replicas = strategy.num_replicas_in_sync
    clips = optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue
    if replicas == 1 or not clips:
        return
    clip_share = optimizer._clip_gradients  # Keras' own clipping, bound to this optimizer

    def clip_the_sum(grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return clip_share(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = context.all_reduce("SUM", [tf.convert_to_tensor(grads[i]) for i in present])
        clipped = clip_share(summed)
        out = list(grads)
        for i, g in zip(present, clipped):
            out[i] = g / replicas
        return out

    optimizer._clip_gradients = clip_the_sum
