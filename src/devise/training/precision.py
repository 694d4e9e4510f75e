"""``trainer.mixed_precision``: the Keras dtype policy the model is built under."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from devise.encoders.feature_extractor import dtype_policy

POLICIES = {"off": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def precision_policy(mixed_precision: str) -> Iterator[None]:
    """Layers built inside compute in ``float16``/``bfloat16`` with ``float32`` weights; ``"off"``: as they are.

    The global policy is restored on exit, so only the layers built inside
    carry the mixed policy (the model keeps it when saved). Whatever the
    policy, the model's L2 normalisation and the loss run in ``float32``,
    so its outputs are ``float32`` unit vectors. ``"float16"`` is for GPUs
    (``compile`` then wraps the optimizer in Keras' loss scaling);
    ``"bfloat16"`` for TPUs and recent GPUs and CPUs, without loss scaling.
    On most CPUs both run slower than ``float32``.

    Args:
        mixed_precision: ``"off"``, ``"float16"`` or ``"bfloat16"``.
    """
    if mixed_precision not in POLICIES:
        raise ValueError(f"mixed_precision must be one of {sorted(POLICIES)}, got {mixed_precision!r}")
    policy = POLICIES[mixed_precision]
    if policy is None:
        yield
        return
    with dtype_policy(policy):
        yield
