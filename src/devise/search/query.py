"""How a combined query (text, photos and negative terms) becomes one search vector.

Every term is embedded in the joint space and made a unit vector; the query
is their weighted sum, re-normalised::

    q = normalise( w_text * t  +  w_like * sum_j p_j  -  w_not * sum_n n_n )

with ``t`` the text query, ``p_j`` the photos ("more like this") and ``n_n``
the negative text terms. Each term counts once at its group's weight (two
photos weigh twice one photo), and the result is a unit vector, so scores
stay cosines in ``[-1, 1]``.
"""

from __future__ import annotations

import numpy as np

from devise.errors import QueryError

#: Below this norm the terms cancel out (e.g. the same words given as text and as --not).
MIN_COMBINED_NORM = 1e-6


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (``float32``); a zero row is refused."""
    vectors = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(~np.isfinite(norms)) or np.any(norms <= 0):
        raise QueryError("a query term embeds to a zero or non-finite vector")
    return vectors / norms


def combine_query(
    text: np.ndarray | None = None,
    like: np.ndarray | None = None,
    negative: np.ndarray | None = None,
    *,
    text_weight: float = 1.0,
    like_weight: float = 1.0,
    not_weight: float = 1.0,
) -> np.ndarray:
    """The search vector of a combined query (see the module docstring for the formula).

    Args:
        text: the text query's embedding ``(D,)`` or ``(1, D)``, or ``None``.
        like: photo embeddings ``(P, D)``, or ``None``.
        negative: embeddings of negative terms ``(N, D)``, or ``None``.
        text_weight, like_weight, not_weight: the groups' weights (``>= 0``).

    Returns:
        A ``float32`` unit vector ``(D,)``.

    Raises:
        QueryError: no positive term, a negative weight, or terms that cancel out.
    """
    for name, weight in (("text", text_weight), ("like", like_weight), ("not", not_weight)):
        if not np.isfinite(weight) or weight < 0:
            raise QueryError(f"{name} weight must be a number >= 0, got {weight}")
    groups = [(text, text_weight), (like, like_weight), (negative, -not_weight)]
    if all(vectors is None or np.size(vectors) == 0 for vectors, _ in groups[:2]):
        raise QueryError("a query needs text or at least one photo (negative terms alone rank nothing)")
    total = None
    for vectors, weight in groups:
        if vectors is None or np.size(vectors) == 0:
            continue
        vectors = np.asarray(vectors, np.float32)
        part = weight * unit_rows(vectors.reshape(-1, vectors.shape[-1])).sum(axis=0)
        total = part if total is None else total + part
    norm = float(np.linalg.norm(total))
    if not norm > MIN_COMBINED_NORM:
        raise QueryError("the query's terms cancel out (zero weights, or the same terms given as positive and --not)")
    return (total / norm).astype(np.float32)
