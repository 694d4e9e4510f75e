"""Resuming an interrupted training run from its last completed epoch.

After every epoch the trainer writes ``<run dir>/resume/checkpoint.h5``;
rerunning the same command with the same ``--run-dir`` after a crash,
``kill -9`` or Ctrl-C loads it and continues with the next epoch, and the
run ends where an uninterrupted one with the same seed ends.

Why not ``keras.callbacks.BackupAndRestore``: it writes the weights and the
epoch number as two files, one after the other, so a kill between the two
resumes one epoch's weights under another epoch's number; and it keeps
neither the best-so-far validation weights (which the trainer restores at the
end) nor the history, nor the loss's random state, so a resumed run would
not end where an uninterrupted one does. This checkpoint is one HDF5 file
holding all of it, written to a temporary name, flushed to disk and renamed
into place (:func:`devise.atomicfile.atomic_path`), with a SHA-256 digest
that is checked before anything in it is trusted.

What it holds:

* ``state/<i>``: the values of :func:`mutable_variables` -- the trainable
  weights, the random-seed states of the dropout layers and of the loss,
  and the optimizer's variables (step count, moments);
* ``best/<i>``: the best validation weights so far (``attrs``: their epoch
  and R-sum), when a validation split is used;
* ``attrs``: the completed epoch count, the history so far (JSON), a digest
  of the run's config, and digests of the variables that training never
  changes (the frozen word table, feature statistics) instead of their
  values, since the trainer rebuilds those from the config;
* ``attrs["digest"]``: SHA-256 over all of the above.

The shuffled order of epoch ``e`` depends only on the seed and ``e`` (see
:meth:`devise.training.Trainer.fit`), so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading

import h5py
import keras
import numpy as np

from devise.atomicfile import atomic_path
from devise.errors import DeviseError
from devise.runs import RESUME_CHECKPOINT

#: The checkpoint's path inside a run directory.
CHECKPOINT_FILE = RESUME_CHECKPOINT  # devise.runs names it: readers tell an interrupted run by it
FORMAT = "devise-training-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(DeviseError):
    """A run directory's checkpoint cannot be resumed from (damaged, or another config or model)."""


def is_seed_state(variable) -> bool:
    """Whether ``variable`` is the state of a ``keras.random.SeedGenerator`` (it changes at every draw)."""
    return variable.path.rsplit("/", 1)[-1].startswith("seed_generator_state")


def mutable_variables(model: keras.Model, loss=None) -> list:
    """Every variable that training changes: trainable weights, seed states, optimizer state, the loss's seed.

    The optimizer must be built (``model.optimizer.build(model.trainable_variables)``).
    """
    variables = [v for v in model.variables if v.trainable or is_seed_state(v)]
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    generator = getattr(loss, "seed_generator", None)
    if generator is not None:
        variables.append(generator.state)
    return variables


def constant_variables(model: keras.Model) -> list:
    """The model's variables that training leaves alone (frozen word table, feature statistics)."""
    return [v for v in model.variables if not (v.trainable or is_seed_state(v))]


def _array_digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.view(np.uint8).reshape(-1))
    return h.hexdigest()


def config_digest(config_dict: dict) -> str:
    """A digest of a resolved config (as :func:`devise.training.config.config_to_dict` gives it)."""
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class TrainingState:
    """What a checkpoint restores.

    Attributes:
        epoch: epochs completed.
        history: per-epoch logs so far (``{"loss": [...], "val_rsum": [...]}``).
        values: values of :func:`mutable_variables`, in order.
        constants: digests of :func:`constant_variables`, in order.
        best_weights: ``model.get_weights()`` of the best validation epoch (``None`` without validation).
        best_epoch: that epoch (0-based; -1 without).
        best_rsum: its validation R-sum.
    """

    epoch: int
    history: dict[str, list[float]]
    values: list[np.ndarray]
    constants: list[str]
    best_weights: list[np.ndarray] | None = None
    best_epoch: int = -1
    best_rsum: float = -1.0


def _digest(attrs: dict, groups: dict[str, list[np.ndarray]]) -> str:
    h = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode())
    for name in sorted(groups):
        for array in groups[name]:
            h.update(_array_digest(array).encode())
    return h.hexdigest()


def write_checkpoint(path: str, state: TrainingState, config_hash: str) -> None:
    """Write ``state`` to ``path`` atomically and durably (the old checkpoint stays until the new one is whole)."""
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "epoch": int(state.epoch),
        "history": json.dumps(state.history),
        "config_digest": config_hash,
        "constants": json.dumps(state.constants),
        "best_epoch": int(state.best_epoch),
        "best_rsum": float(state.best_rsum),
    }
    groups = {"state": state.values, "best": state.best_weights or []}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path, durable=True) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["digest"] = _digest(attrs, groups)
            for name, arrays in groups.items():
                group = f.create_group(name)
                group.attrs["count"] = len(arrays)
                for i, array in enumerate(arrays):
                    group.create_dataset(str(i), data=np.asarray(array))


def read_checkpoint(path: str, config_hash: str) -> TrainingState | None:
    """The state saved at ``path``, or ``None`` when there is none.

    Raises:
        CheckpointError: the file is damaged or incomplete (digest mismatch,
            unreadable), or was written for another config.
    """
    if not os.path.exists(path):
        return None
    what_to_do = "delete the run directory's resume/ folder to start the run again from epoch 1"
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: not a devise training checkpoint of format {FORMAT_VERSION}; {what_to_do}"
                )
            attrs = {
                key: (f.attrs[key].item() if isinstance(f.attrs[key], np.generic) else f.attrs[key])
                for key in (
                    "format",
                    "format_version",
                    "epoch",
                    "history",
                    "config_digest",
                    "constants",
                    "best_epoch",
                    "best_rsum",
                )
            }
            groups = {
                name: [f[name][str(i)][()] for i in range(int(f[name].attrs["count"]))] for name in ("state", "best")
            }
            stored = f.attrs["digest"]
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the training checkpoint cannot be read ({exc}); {what_to_do}") from None
    if _digest(attrs, groups) != stored:
        raise CheckpointError(f"{path}: the training checkpoint is damaged (its digest does not match); {what_to_do}")
    if attrs["config_digest"] != config_hash:
        raise CheckpointError(
            f"{path}: this run directory holds an interrupted run of a different config; rerun with the "
            "config and overrides it was started with (its config.yaml), or use a new --run-dir"
        )
    return TrainingState(
        epoch=int(attrs["epoch"]),
        history=json.loads(attrs["history"]),
        values=groups["state"],
        constants=json.loads(attrs["constants"]),
        best_weights=groups["best"] or None,
        best_epoch=int(attrs["best_epoch"]),
        best_rsum=float(attrs["best_rsum"]),
    )


def restore(state: TrainingState, variables: list, constants: list, path: str) -> None:
    """Assign a checkpoint's values to ``variables``, after checking it fits the model just built.

    Raises:
        CheckpointError: the number or shapes of the variables differ, or a
            constant (the frozen word table, feature statistics) is not what
            it was when the checkpoint was written.
    """
    fits = len(state.values) == len(variables) and all(
        tuple(np.shape(a)) == tuple(v.shape) for a, v in zip(state.values, variables)
    )
    if not fits:
        raise CheckpointError(
            f"{path}: the checkpoint does not match the model this config builds "
            f"({len(state.values)} saved variables, {len(variables)} in the model); use a new --run-dir"
        )
    if state.constants != [_array_digest(keras.ops.convert_to_numpy(v)) for v in constants]:
        raise CheckpointError(
            f"{path}: the word vectors or image features differ from those of the interrupted run "
            "(the frozen table or feature statistics changed); use a new --run-dir"
        )
    for variable, value in zip(variables, state.values):
        variable.assign(value)


class TrainingCheckpoint(keras.callbacks.Callback):
    """Writes a :class:`TrainingState` after every epoch whose loss is finite.

    Place it after the callbacks whose state it saves (the best-validation
    selector), so the epoch's best weights are in the checkpoint.

    The values are copied when the epoch ends, and the file is written by a
    background thread while the next epoch trains (at most one write in
    flight; the next epoch's write, and the end of training, wait for it and
    re-raise its error; the trainer also waits when training stops with an
    error or Ctrl-C, so the last finished epoch is on disk when it returns).
    A kill during a write leaves the previous
    checkpoint whole, as before; a run resumes from whichever is on disk.
    Measured: the write (about 40 MB with the demo's word table, flushed to
    disk) cost 0.3-0.4 s of each 8-10 s epoch on the 2-core machine.

    Args:
        path: the checkpoint file; ``None``: keep the history, write nothing
            (a non-chief worker of a multi-worker run).
        variables: :func:`mutable_variables` of the model being trained.
        constants: :func:`constant_variables` of it.
        config_hash: :func:`config_digest` of the run's config.
        selector: the best-validation callback (attributes ``best``,
            ``best_epoch``, ``best_weights``), or ``None``.
        history: the history of the epochs already run (when resuming).
    """

    def __init__(
        self, path: str | None, variables: list, constants: list, config_hash: str, *, selector=None, history=None
    ):
        super().__init__()
        self.path = path
        self.variables = variables
        self.constant_digests = [_array_digest(keras.ops.convert_to_numpy(v)) for v in constants]
        self.config_hash = config_hash
        self.selector = selector
        self.history: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if self.path is None or not math.isfinite(float(logs.get("loss", 0.0))):
            return  # a diverged epoch is not worth resuming from
        selector = self.selector
        state = TrainingState(
            epoch=epoch + 1,
            history=self.history,
            values=[keras.ops.convert_to_numpy(v) for v in self.variables],
            constants=self.constant_digests,
            best_weights=selector.best_weights if selector is not None else None,
            best_epoch=selector.best_epoch if selector is not None else -1,
            best_rsum=float(selector.best) if selector is not None else -1.0,
        )
        self.wait()
        self._writer = threading.Thread(target=self._write, args=(state,), name="devise-checkpoint")
        self._writer.start()

    def _write(self, state: TrainingState) -> None:
        try:
            write_checkpoint(self.path, state, self.config_hash)
        except BaseException as exc:  # re-raised by wait(), in the training thread
            self._error = exc

    def wait(self, *, raise_error: bool = True) -> None:
        """Wait for the checkpoint being written, if any; re-raise its error (unless ``raise_error`` is false)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error

    def on_train_end(self, logs=None):
        self.wait()
