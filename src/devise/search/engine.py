"""Search an image index with text, or annotate a photo with captions.

A finished training run is read through :mod:`devise.runs` (its config and
completion marker), its backbone rebuilt by the encoders' registry and its
dataset by :mod:`devise.datasets.from_config`: search never imports
``devise.training``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from devise.datasets.from_config import load_records
from devise.datasets.report import DataReport
from devise.encoders.feature_extractor import FeatureExtractor
from devise.encoders.registry import feature_extractor_from_config
from devise.errors import DeviseError, QueryError
from devise.model import DeViSEModel
from devise.runs import CONFIG_FILE, check_run_complete, read_run_config
from devise.search.index import ImageIndex, IndexMismatchError, UpdateReport, exact_search, update_index

if TYPE_CHECKING:  # pragma: no cover
    from devise.search.approximate import ApproximateIndex


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One ranked image: its index id (path relative to the indexed folder), path and cosine score."""

    rank: int
    id: str
    path: str
    score: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CaptionHit:
    """One ranked caption for an image."""

    rank: int
    caption: str
    score: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SearchEngine:
    """Text-to-image search over an :class:`ImageIndex`, and image-to-text annotation.

    Args:
        model: the trained joint model.
        extractor: the image backbone the model was trained on.
        index: an image index built by this model (optional: annotation and
            indexing need none).
        run_dir: the training run directory, if known.

    Example:
    ```python
    engine = devise.SearchEngine.load("runs/demo-20261127-101500", "photos.h5")
    for hit in engine.search("two red circles", k=5):
        print(hit.rank, hit.score, hit.path)
    engine.annotate("photo.jpg", k=3)
    ```
    """

    def __init__(
        self,
        model: DeViSEModel,
        extractor: FeatureExtractor,
        index: ImageIndex | None = None,
        *,
        run_dir: str | None = None,
    ):
        if extractor.fingerprint() != model.image_fingerprint and model.image_fingerprint:
            raise DeviseError(
                f"the model was trained on '{model.image_fingerprint}' features, "
                f"not '{extractor.fingerprint()}'"
            )
        self.model = model
        self.extractor = extractor
        self.run_dir = run_dir
        self.fingerprint = model.fingerprint()
        self.index = None
        self.approximate = None
        # (captions, their embeddings) of the last annotate call: callers
        # (the web app) annotate image after image against the same list.
        self._caption_vectors: tuple[list[str], np.ndarray] | None = None
        if index is not None:
            self.use_index(index)

    @classmethod
    def load(cls, run_dir: str | os.PathLike | None = None, index: str | os.PathLike | None = None) -> "SearchEngine":
        """Load the model of a training run and, optionally, an index built by it.

        With ``run_dir=None`` the run recorded in the index is used.
        """
        opened = ImageIndex.open(index) if index is not None else None
        if run_dir is None:
            if opened is None:
                raise DeviseError("SearchEngine.load needs a run directory or an index that names one")
            if not opened.run_dir:
                # An empty run_dir would resolve to the current folder.
                raise DeviseError(
                    f"{opened.path}: the index does not record the run that built it; "
                    "give the run directory (--run)"
                )
            run_dir = opened.run_dir
        run_dir = os.fspath(run_dir)
        if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
            raise DeviseError(f"{run_dir}: not a devise run directory (no {CONFIG_FILE})")
        check_run_complete(run_dir)
        model = DeViSEModel.load(run_dir)
        extractor = feature_extractor_from_config(read_run_config(run_dir).image_encoder)
        engine = cls(model, extractor, run_dir=os.path.abspath(run_dir))
        if opened is not None:
            engine.use_index(opened)
        return engine

    def use_index(self, index: ImageIndex | str | os.PathLike) -> None:
        """Search ``index`` from now on; refused if another model built it.

        Args:
            index: an opened index (used as is), or the path of one.

        Raises:
            IndexMismatchError: another model built the index.
        """
        if isinstance(index, ImageIndex):
            # Reopening would re-read every id and path: millions on a large index.
            if index.model_fingerprint != self.fingerprint:
                raise IndexMismatchError.for_index(
                    index.path, index.model_fingerprint, self.fingerprint, index.run_dir
                )
            self.index = index
        else:
            self.index = ImageIndex.open(index, model_fingerprint=self.fingerprint)
        self.approximate = None

    def use_approximate(
        self, path: str | os.PathLike | None = None, *, nprobe: int = 16, rebuild: bool = False
    ) -> ApproximateIndex:
        """Answer searches from a FAISS index (extra ``ann``) instead of scanning every vector.

        The FAISS file (default ``<index>.faiss``) is built from the image
        index when absent, stale (re-indexed since) or ``rebuild`` is set.

        Args:
            path: the FAISS file.
            nprobe: clusters scanned per query (at least 1).
            rebuild: build the FAISS file even if a valid one exists.

        Returns:
            The approximate index now in use.
        """
        from devise.search.approximate import ApproximateIndex

        if self.index is None:
            raise DeviseError("no index loaded: pass one to SearchEngine.load or call use_index")
        path = os.fspath(path) if path is not None else self.index.path + ".faiss"
        ann = None
        if os.path.exists(path) and not rebuild:
            try:
                ann = ApproximateIndex.load(path, image_index=self.index)
            except IndexMismatchError:
                ann = None  # built before the last re-index: rebuild below
        if ann is None:
            ann = ApproximateIndex.build(self.index)
            ann.save(path)
        ann.nprobe = nprobe
        self.approximate = ann
        return ann

    # -- embedding ------------------------------------------------------------
    def embed_image_files(self, paths: Sequence[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Joint embeddings of image files; bad files are skipped and listed."""
        result = self.extractor.extract_files(list(paths), progress=False)
        return self.model.embed_image_features(result.features), result.indices, result.failures

    def update_index(
        self, index_path: str | os.PathLike, image_root: str | os.PathLike, *, progress: bool = True
    ) -> UpdateReport:
        """Index (or incrementally re-index) every image under ``image_root``."""
        report = update_index(
            os.fspath(index_path),
            os.fspath(image_root),
            model_fingerprint=self.fingerprint,
            run_dir=self.run_dir or "",
            embed=self.embed_image_files,
            progress=progress,
        )
        self.use_index(index_path)
        return report

    # -- queries ----------------------------------------------------------------
    def unknown_words(self, query: str) -> list[str]:
        """The words of ``query`` that have no word vector in the model (they are ignored)."""
        return self.model.unknown_words(query)

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """The ``k`` indexed images closest to a text query.

        Any word the model's word vectors know counts, whether or not it was
        in the training captions; see :meth:`unknown_words` for the others.

        Raises:
            QueryError: the query is empty or has no word with a vector.
        """
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[SearchHit]]:
        """:meth:`search` for several queries in one pass over the index."""
        if self.index is None:
            raise DeviseError("no index loaded: pass one to SearchEngine.load or call use_index")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        for query in queries:
            self.model.check_query(query)
        vectors = self.model.embed_texts(list(queries))
        if self.approximate is not None:
            scores, rows = self.approximate.search(vectors, k)
        else:
            scores, rows = exact_search(self.index, vectors, k)
        return [
            [
                SearchHit(rank + 1, self.index.ids[row], self.index.paths[row], float(score))
                for rank, (score, row) in enumerate(zip(query_scores, query_rows))
                if row >= 0
            ]
            for query_scores, query_rows in zip(scores, rows)
        ]

    def classify(
        self, images: Sequence[str | os.PathLike], labels: Sequence[str], k: int = 5
    ) -> tuple[list[list[CaptionHit] | None], list[tuple[str, str]]]:
        """Open-vocabulary classification: rank any label words for each image file.

        Works with caption-trained and label-trained (zero-shot) runs alike:
        a label is embedded like a caption, so any word with a vector counts.

        Args:
            images: image files.
            labels: candidate labels (e.g. ``["cat", "dog", "school bus"]``).
            k: labels returned per image.

        Returns:
            ``(ranked, failures)``: per image its top ``k`` labels (``None``
            for an image that could not be decoded) and ``(path, reason)``
            for each such image.

        Raises:
            QueryError: a label is empty or has no word with a vector.
        """
        labels = list(dict.fromkeys(labels))
        if not labels:
            raise QueryError("classify needs at least one label")
        for label in labels:
            try:
                self.model.check_query(label)
            except QueryError as exc:
                raise QueryError(f"label {label!r}: {exc}", exc.unknown_words) from None
        embedded, indices, failures = self.embed_image_files([os.fspath(p) for p in images])
        ranked: list[list[CaptionHit] | None] = [None] * len(images)
        if not indices:
            return ranked, failures
        scores, rows = exact_search(self.model.embed_texts(labels), embedded, min(k, len(labels)))
        for position, image_scores, image_rows in zip(indices, scores, rows):
            ranked[position] = [
                CaptionHit(rank + 1, labels[row], float(score)) for rank, (score, row) in enumerate(zip(image_scores, image_rows))
            ]
        return ranked, failures

    def annotate(self, image: str | os.PathLike, captions: Sequence[str], k: int = 5) -> list[CaptionHit]:
        """The ``k`` candidate captions that best describe an image file."""
        if not captions:
            raise DeviseError("annotate needs at least one candidate caption")
        embedded, indices, failures = self.embed_image_files([os.fspath(image)])
        if failures:
            raise DeviseError(failures[0][1])
        unique = list(dict.fromkeys(captions))
        cached = self._caption_vectors
        if cached is None or cached[0] != unique:
            cached = (unique, self.model.embed_texts(unique))
            self._caption_vectors = cached
        scores, rows = exact_search(cached[1], embedded, k)
        return [CaptionHit(rank + 1, unique[row], float(s)) for rank, (s, row) in enumerate(zip(scores[0], rows[0]))]


def run_captions(run_dir: str | os.PathLike) -> list[str]:
    """The captions of a training run's dataset: the default candidates for :meth:`SearchEngine.annotate`.

    Args:
        run_dir: the training run directory.

    Returns:
        Every caption of the run's dataset, in dataset order (repeats kept).

    Example:
    ```python
    engine.annotate("photo.jpg", run_captions(engine.run_dir), k=3)
    ```
    """
    return [record.caption for record in load_records(read_run_config(run_dir).data, DataReport())]
