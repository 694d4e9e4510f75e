"""Word vectors: GloVe (text or zip), word2vec (text or binary), a cache, the offline 50-d package and the word table a model carries."""

from devise.embeddings.glove import (
    OOV_POLICIES,
    GloveLoadResult,
    LoadIssue,
    OOVReport,
    WordVectors,
    build_embedding_matrix,
    load_glove_text,
    load_offline_glove_50d,
    split_zip_member,
)
from devise.embeddings.vector_cache import load_word_vectors_cached
from devise.embeddings.word2vec import load_word2vec_binary, load_word2vec_text
from devise.embeddings.word_table import WordTable, build_word_table

__all__ = [
    "OOV_POLICIES",
    "GloveLoadResult",
    "LoadIssue",
    "OOVReport",
    "WordTable",
    "WordVectors",
    "build_embedding_matrix",
    "build_word_table",
    "load_glove_text",
    "load_offline_glove_50d",
    "load_word2vec_binary",
    "load_word2vec_text",
    "load_word_vectors_cached",
    "split_zip_member",
]
