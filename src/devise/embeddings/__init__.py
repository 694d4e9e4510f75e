"""Word vectors: GloVe in Stanford's text format and the offline 50-d package."""

from devise.embeddings.glove import (
    OOV_POLICIES,
    GloveLoadResult,
    LoadIssue,
    OOVReport,
    WordVectors,
    build_embedding_matrix,
    load_glove_text,
    load_offline_glove_50d,
)

__all__ = [
    "OOV_POLICIES",
    "GloveLoadResult",
    "LoadIssue",
    "OOVReport",
    "WordVectors",
    "build_embedding_matrix",
    "load_glove_text",
    "load_offline_glove_50d",
]
