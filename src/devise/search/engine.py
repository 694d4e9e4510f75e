"""Search an image index with text, or annotate a photo with captions.

A finished training run is read through :mod:`devise.runs` (its config and
completion marker), its backbone rebuilt by the encoders' registry and its
dataset by :mod:`devise.datasets.from_config`: search never imports
``devise.training``.

Text is embedded by :class:`devise.numpy_model.NumpyTextModel` when the
model file allows it (``text_backend="auto"``, the default), so a text
search never imports TensorFlow; the Keras model and the image backbone
are loaded on first use, by photo queries, annotation and indexing.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from devise.encoders.text_numpy import UnsupportedTextEncoderError
from devise.errors import DeviseError, QueryError
from devise.numpy_model import NumpyTextModel
from devise.runs import CONFIG_FILE, check_run_complete, read_run_config
from devise.search.filters import SearchFilter
from devise.search.index import (
    ImageIndex,
    IndexMismatchError,
    UpdateReport,
    exact_search,
    update_index,
)
from devise.search.query import combine_query

if TYPE_CHECKING:  # pragma: no cover
    from devise.encoders.feature_extractor import FeatureExtractor
    from devise.encoders.feature_shards import FeatureShards
    from devise.model import DeViSEModel
    from devise.search.approximate import ApproximateIndex

#: How :meth:`SearchEngine.load` embeds text: numpy when the model file allows it, numpy only, or Keras.
TEXT_BACKENDS = ("auto", "numpy", "keras")


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One ranked image: its index id (path relative to the indexed folder), path and cosine score.

    ``date`` is the photo's date as the index stores it (ISO 8601, local time) and
    ``date_source`` where it came from: ``"exif"`` or ``"mtime"`` (see :mod:`devise.search.photo_date`).
    """

    rank: int
    id: str
    path: str
    score: float
    date: str = ""
    date_source: str = ""

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
        model: the trained joint model, or its text side alone
            (:class:`~devise.numpy_model.NumpyTextModel`, no TensorFlow): then
            the full model is loaded from the same file on first use by an
            image (a photo query, annotation, indexing).
        extractor: the image backbone the model was trained on (``None``:
            rebuilt from ``run_dir``'s config on first use).
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
        model: DeViSEModel | NumpyTextModel,
        extractor: FeatureExtractor | None = None,
        index: ImageIndex | None = None,
        *,
        run_dir: str | None = None,
    ):
        self.text_model = model
        self._model = None if isinstance(model, NumpyTextModel) else model
        self._extractor = None
        if extractor is not None:
            self._use_extractor(extractor)
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
    def load(
        cls,
        run_dir: str | os.PathLike | None = None,
        index: str | os.PathLike | None = None,
        *,
        text_backend: str = "auto",
    ) -> SearchEngine:
        """Load the model of a training run and, optionally, an index built by it.

        With ``run_dir=None`` the run recorded in the index is used.

        Args:
            run_dir: the training run directory.
            index: an index file built by the run's model.
            text_backend: ``"auto"`` (the default): text is embedded in numpy
                (no TensorFlow; equal to the Keras model's vectors to 1e-5),
                or by Keras if the model file holds something the numpy path
                does not reproduce; ``"numpy"``: numpy or an error;
                ``"keras"``: the Keras model, loaded at once with the backbone.
                Either way, images need Keras, loaded on first use.
        """
        if text_backend not in TEXT_BACKENDS:
            raise ValueError(f"text_backend must be one of {TEXT_BACKENDS}, got {text_backend!r}")
        opened = ImageIndex.open(index) if index is not None else None
        if run_dir is None:
            if opened is None:
                raise DeviseError("SearchEngine.load needs a run directory or an index that names one")
            if not opened.run_dir:
                # An empty run_dir would resolve to the current folder.
                raise DeviseError(
                    f"{opened.path}: the index does not record the run that built it; give the run directory (--run)"
                )
            run_dir = opened.run_dir
        run_dir = os.fspath(run_dir)
        if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
            raise DeviseError(f"{run_dir}: not a devise run directory (no {CONFIG_FILE})")
        check_run_complete(run_dir)
        model = None
        if text_backend != "keras":
            try:
                model = NumpyTextModel.load(run_dir)
            except UnsupportedTextEncoderError:
                if text_backend == "numpy":
                    raise
        if model is None:
            from devise.model import DeViSEModel

            model = DeViSEModel.load(run_dir)
        engine = cls(model, run_dir=os.path.abspath(run_dir))
        if text_backend == "keras":
            engine.extractor  # noqa: B018 - built now, as before the numpy path existed
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
                raise IndexMismatchError.for_index(index.path, index.model_fingerprint, self.fingerprint, index.run_dir)
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

    # -- the model and the backbone, loaded when first needed ------------------
    @property
    def text_backend(self) -> str:
        """``"numpy"`` or ``"keras"``: what embeds text queries."""
        return "numpy" if isinstance(self.text_model, NumpyTextModel) else "keras"

    @property
    def model(self) -> DeViSEModel:
        """The full joint model (image and text side); loaded with Keras on first use if the engine has none yet.

        Raises:
            DeviseError: the model file changed since the engine read it.
        """
        if self._model is None:
            from devise.model import DeViSEModel

            model = DeViSEModel.load(self.text_model.path)
            if model.fingerprint() != self.fingerprint:
                raise DeviseError(
                    f"{self.text_model.path}: the model file changed since this engine read it; load the engine again"
                )
            self._model = model
        return self._model

    @property
    def extractor(self) -> FeatureExtractor:
        """The image backbone; rebuilt from the run's config on first use if none was given."""
        if self._extractor is None:
            if self.run_dir is None:
                raise DeviseError("this engine has no image backbone: pass an extractor, or load it from a run")
            from devise.encoders.registry import feature_extractor_from_config

            self._use_extractor(feature_extractor_from_config(read_run_config(self.run_dir).image_encoder))
        return self._extractor

    def _use_extractor(self, extractor: FeatureExtractor) -> None:
        expected = self.text_model.image_fingerprint
        if expected and extractor.fingerprint() != expected:
            raise DeviseError(f"the model was trained on '{expected}' features, not '{extractor.fingerprint()}'")
        self._extractor = extractor

    # -- embedding ------------------------------------------------------------
    def embed_image_files(self, paths: Sequence[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Joint embeddings of image files; bad files are skipped and listed."""
        result = self.extractor.extract_files(list(paths), progress=False)
        return self.model.embed_image_features(result.features), result.indices, result.failures

    def update_index(
        self,
        index_path: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        progress: bool = True,
        features: str | os.PathLike | FeatureShards | None = None,
    ) -> UpdateReport:
        """Index (or incrementally re-index) every image under ``image_root``.

        Args:
            features: a ``devise-beam-extract`` manifest (or its folder, or opened :class:`FeatureShards`) of the
                model's backbone (checked against the fingerprint the model records): images its shards hold
                take their embeddings (or features) from them; only the others build the backbone.
        """
        embed, counts = self.embed_image_files, {}
        if features is not None:
            from devise.encoders.feature_shards import FeatureShards, embed_from_shards, served_line

            expected = self.text_model.image_fingerprint or self.extractor.fingerprint()
            if not isinstance(features, FeatureShards):
                features = FeatureShards.open(features, extractor_fingerprint=expected)
            features.check_extractor(expected)
            project = lambda feats: self.model.embed_image_features(feats)  # noqa: E731 - the Keras model when needed
            embed = embed_from_shards(features, model_fingerprint=self.fingerprint, project=project,
                                      fallback=self.embed_image_files, counts=counts)  # fmt: skip
        report = update_index(os.fspath(index_path), os.fspath(image_root), model_fingerprint=self.fingerprint,
                              run_dir=self.run_dir or "", embed=embed, progress=progress)  # fmt: skip
        report.shards = served_line(features, counts, self.fingerprint) if features is not None else ""
        self.use_index(index_path)
        return report

    # -- queries ----------------------------------------------------------------
    def unknown_words(self, query: str) -> list[str]:
        """The words of ``query`` that have no word vector in the model (they are ignored)."""
        return self.text_model.unknown_words(query)

    def check_query(self, text: str) -> list[str]:
        """Refuse a text query with no word that has a vector; return its unknown words otherwise.

        Raises:
            QueryError: the text is empty, or no word of it has a vector.
        """
        return self.text_model.check_query(text)

    def search(
        self,
        text: str | None = None,
        k: int = 10,
        *,
        like: Sequence[str | os.PathLike] = (),
        like_rows: Sequence[int] = (),
        not_: Sequence[str] = (),
        under: Sequence[str | os.PathLike] = (),
        since: str | datetime.date | None = None,
        until: str | datetime.date | None = None,
        min_score: float | None = None,
        text_weight: float = 1.0,
        like_weight: float = 1.0,
        not_weight: float = 1.0,
    ) -> list[SearchHit]:
        """The ``k`` indexed images closest to a query of text, photos, or both.

        Any word the model's word vectors know counts, whether or not it was
        in the training captions; see :meth:`unknown_words` for the others.

        A combined query is one vector, the weighted sum of its terms' unit
        embeddings, re-normalised (:func:`devise.search.query.combine_query`)::

            q = normalise(text_weight * t + like_weight * sum(p) - not_weight * sum(n))

        Photos are compared in the joint space, where the index's vectors
        live: a photo that is in the index (same file, size and modification
        time) uses its stored row and is not decoded again.

        Args:
            text: a text query, or ``None`` for photos only.
            k: how many results (at most).
            like: photo files to search by ("more like this").
            like_rows: rows of this index to search by (what the web page sends).
            not_: text terms to steer away from.
            under: only photos in these folders (relative to the indexed
                folder, or absolute inside it).
            since, until: only photos dated in this range (EXIF date, else modification time; inclusive;
                ``YYYY-MM-DD`` is a local day, or an ISO date-time; see
                :mod:`devise.search.filters`).
            min_score: drop results scoring below this (fewer than ``k`` may remain).
            text_weight, like_weight, not_weight: the terms' weights.

        Returns:
            The hits, best first: the true top ``k`` of the photos that pass
            the filters (filters run inside the top-k scan, not after it).

        Raises:
            QueryError: no text and no photo, text with no word that has a
                vector, a photo that cannot be read, or a bad filter.
        """
        if self.index is None:
            raise DeviseError("no index loaded: pass one to SearchEngine.load or call use_index")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if min_score is not None and not np.isfinite(min_score):
            raise QueryError(f"min_score must be a number, got {min_score}")
        plain = (
            text is not None
            and not like
            and not like_rows
            and not not_
            and not under
            and since is None
            and until is None
        )
        if plain:
            hits = self.search_batch([text], k)[0]
        else:
            vector = self.query_vector(
                text,
                like=like,
                like_rows=like_rows,
                not_=not_,
                text_weight=text_weight,
                like_weight=like_weight,
                not_weight=not_weight,
            )
            mask = SearchFilter(tuple(map(os.fspath, under)), since, until).mask(
                self.index.ids, self.index.date_ns, self.index.image_root
            )
            if self.approximate is not None and mask is None:
                scores, rows = self.approximate.search(vector[None, :], k)
            else:
                # FAISS cannot run the filter inside its search: filtered queries scan exactly.
                scores, rows = exact_search(self.index, vector, k, mask=mask)
            hits = self._hits(scores[0], rows[0])
        if min_score is not None:
            hits = [hit for hit in hits if hit.score >= min_score]
        return hits

    def query_vector(
        self,
        text: str | None = None,
        *,
        like: Sequence[str | os.PathLike] = (),
        like_rows: Sequence[int] = (),
        not_: Sequence[str] = (),
        text_weight: float = 1.0,
        like_weight: float = 1.0,
        not_weight: float = 1.0,
    ) -> np.ndarray:
        """The unit search vector of a combined query (see :meth:`search`)."""
        texts = [text] if text is not None else []
        for term in [*texts, *not_]:
            self.text_model.check_query(term)
        embedded = self.text_model.embed_texts([*texts, *not_]) if texts or not_ else np.zeros((0, 0), np.float32)
        photos = self.embed_photos(like, like_rows)
        return combine_query(
            embedded[: len(texts)] if texts else None,
            photos if len(photos) else None,
            embedded[len(texts) :] if not_ else None,
            text_weight=text_weight,
            like_weight=like_weight,
            not_weight=not_weight,
        )

    def indexed_row(self, path: str | os.PathLike) -> int | None:
        """The index row of a photo file, if that very file is indexed and unchanged since."""
        if self.index is None:
            return None
        real = os.path.realpath(os.fspath(path))
        relative = os.path.relpath(real, os.path.realpath(self.index.image_root)).replace(os.sep, "/")
        if relative.startswith("../") or relative == "..":
            return None
        row = self.index.row_of(relative)
        if row is None or os.path.realpath(self.index.paths[row]) != real:
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        if st.st_size != self.index.sizes[row] or st.st_mtime_ns != self.index.mtime_ns[row]:
            return None
        return row

    def embed_photos(self, paths: Sequence[str | os.PathLike] = (), rows: Sequence[int] = ()) -> np.ndarray:
        """Joint embeddings of query photos: files, then index rows.

        A file that is indexed and unchanged (:meth:`indexed_row`) is read
        from the index; only the others go through the image backbone.

        Raises:
            QueryError: a file cannot be read as an image, or a row is not in the index.
        """
        paths = [os.fspath(p) for p in paths]
        indexed = [self.indexed_row(p) for p in paths]
        n = len(self.index) if self.index is not None else 0
        for row in rows:
            if not 0 <= int(row) < n:
                raise QueryError(f"no image at row {row} of the index ({n} images)")
        wanted = [row for row in indexed if row is not None] + [int(r) for r in rows]
        stored = self.index.embeddings(wanted) if wanted else None
        out: list[np.ndarray] = []
        new = [p for p, row in zip(paths, indexed) if row is None]
        extracted = None
        if new:
            for p in new:
                if not os.path.isfile(p):
                    raise QueryError(f"{p}: no such photo file")
            extracted, _, failures = self.embed_image_files(new)
            if failures:
                raise QueryError(f"{failures[0][0]}: cannot be read as an image ({failures[0][1]})")
        taken_stored = taken_new = 0
        for row in indexed:
            if row is None:
                out.append(extracted[taken_new])
                taken_new += 1
            else:
                out.append(stored[taken_stored])
                taken_stored += 1
        out.extend(stored[taken_stored:] if stored is not None else [])
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.stack(out).astype(np.float32)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[SearchHit]:
        return [
            SearchHit(rank + 1, self.index.ids[row], self.index.paths[row], float(score), *self.index.photo_date(row))
            for rank, (score, row) in enumerate(zip(scores, rows))
            if row >= 0
        ]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[SearchHit]]:
        """:meth:`search` for several queries in one pass over the index."""
        if self.index is None:
            raise DeviseError("no index loaded: pass one to SearchEngine.load or call use_index")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        for query in queries:
            self.text_model.check_query(query)
        vectors = self.text_model.embed_texts(list(queries))
        if self.approximate is not None:
            scores, rows = self.approximate.search(vectors, k)
        else:
            scores, rows = exact_search(self.index, vectors, k)
        return [self._hits(query_scores, query_rows) for query_scores, query_rows in zip(scores, rows)]

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
                self.text_model.check_query(label)
            except QueryError as exc:
                raise QueryError(f"label {label!r}: {exc}", exc.unknown_words) from None
        embedded, indices, failures = self.embed_image_files([os.fspath(p) for p in images])
        ranked: list[list[CaptionHit] | None] = [None] * len(images)
        if not indices:
            return ranked, failures
        scores, rows = exact_search(self.text_model.embed_texts(labels), embedded, min(k, len(labels)))
        for position, image_scores, image_rows in zip(indices, scores, rows):
            ranked[position] = [
                CaptionHit(rank + 1, labels[row], float(score))
                for rank, (score, row) in enumerate(zip(image_scores, image_rows))
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
            cached = (unique, self.text_model.embed_texts(unique))
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
    from devise.datasets.from_config import load_records
    from devise.datasets.report import DataReport

    return [record.caption for record in load_records(read_run_config(run_dir).data, DataReport())]
