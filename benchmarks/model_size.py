"""File size and load time of a saved model by word-table size and storage.

The model carries its word table (words in a Keras ``StringLookup``, vectors
as a weight), so ``model.keras`` grows with it. This prints, for GloVe 6B
shapes (50-d and 300-d; 100k words = the default ``word_vectors.max_words``,
400k = the whole source) in float32 and float16: the file size, the time to
``DeViSEModel.load`` it in this process, and the time of the first query.
The 300-d rows are random numbers of the right shape (GloVe 300-d cannot be
downloaded here): size and time depend on the shape, not the values. Words
are the real GloVe 6B words from the offline package.

Run: python benchmarks/model_size.py [--words 100000 400000] [--dims 50 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[50, 300])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    args = parser.parse_args(argv)

    from devise.embeddings import build_word_table, load_offline_glove_50d
    from devise.model import DeViSEModel, build_devise_model

    glove = load_offline_glove_50d()
    print(f"{'words':>8} {'dim':>4} {'dtype':>8} {'model.keras MB':>15} {'load s':>7} {'first query s':>14}")
    for n in args.words:
        table = build_word_table(glove, max_words=n)
        words = table.words
        for dim in args.dims:
            rng = np.random.default_rng(0)
            matrix = table.matrix if dim == 50 else rng.normal(0, 0.4, (len(words) + 2, dim)).astype(np.float32)
            for dtype in args.dtypes:
                model = build_devise_model(
                    words=words, embedding_matrix=matrix, image_dim=1280, joint_dim=256, word_vectors_dtype=dtype
                )
                with tempfile.TemporaryDirectory() as tmp:
                    DeViSEModel(model).save(tmp)
                    size = os.path.getsize(os.path.join(tmp, "model.keras")) / 2**20
                    start = time.perf_counter()
                    loaded = DeViSEModel.load(tmp)
                    load = time.perf_counter() - start
                    start = time.perf_counter()
                    loaded.embed_texts(["a dog on a red sofa"])
                    query = time.perf_counter() - start
                print(f"{len(words):>8} {dim:>4} {dtype:>8} {size:>15.1f} {load:>7.2f} {query:>14.2f}")


if __name__ == "__main__":
    main()
