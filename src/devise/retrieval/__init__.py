"""Retrieval metrics."""

from devise.retrieval.metrics import (
    chance_levels,
    image_to_text_ranks,
    metrics_by_group,
    recall_at_k,
    retrieval_metrics,
    text_to_image_ranks,
)

__all__ = [
    "chance_levels",
    "image_to_text_ranks",
    "metrics_by_group",
    "recall_at_k",
    "retrieval_metrics",
    "text_to_image_ranks",
]
