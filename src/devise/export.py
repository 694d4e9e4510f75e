"""Export a finished run as a TensorFlow SavedModel for serving: raw text and image bytes in, joint-space vectors out.

The SavedModel holds everything: the word table and the tokenisation
(:class:`devise.encoders.text_ops.CaptionTokenizer`), the text encoder, the
image backbone with its weights and preprocessing, image decoding and
fitting (:mod:`devise.datasets.image_ops`) and the image projection. It
loads with ``tf.saved_model.load`` where devise is not installed, and
TensorFlow Serving serves it as it is. Two signatures, each returning
``{"embedding": float32 (N, joint_dim)}`` unit vectors:

* ``encode_text``: ``texts``, a batch of raw UTF-8 strings (queries or
  captions), embedded as :meth:`devise.DeViSEModel.embed_texts` does;
* ``encode_image``: ``images``, a batch of encoded image files (JPEG, PNG,
  GIF, BMP, WebP bytes), embedded as the search engine embeds image files
  (``load_image``, the backbone, the projection).

``encode_text`` is also the ``serving_default``.

Example:
```python
from devise.export import export_saved_model

export_saved_model("runs/demo-20261127-101500", "models/devise/1")
served = tf.saved_model.load("models/devise/1")      # no devise needed here
served.signatures["encode_text"](texts=tf.constant(["two red circles"]))["embedding"]
served.signatures["encode_image"](images=tf.constant([open("photo.jpg", "rb").read()]))["embedding"]
```
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import tensorflow as tf

from devise.atomicfile import check_directory_writable, replace_folder, temporary_path
from devise.datasets.image_ops import NOT_MATCHED as IMAGE_NOT_MATCHED
from devise.datasets.image_ops import load_image_ops
from devise.encoders.registry import feature_extractor_from_config
from devise.encoders.text_ops import NOT_MATCHED as TEXT_NOT_MATCHED
from devise.encoders.text_ops import CaptionTokenizer
from devise.errors import DeviseError
from devise.model import DeViSEModel
from devise.runs import CONFIG_FILE, check_run_complete, read_run_config

#: The signatures of an exported model, and the name of their one output.
TEXT_SIGNATURE = "encode_text"
IMAGE_SIGNATURE = "encode_image"
OUTPUT = "embedding"
#: What the export records about itself, in the SavedModel's ``assets.extra`` folder (ignored by TensorFlow).
EXPORT_INFO = os.path.join("assets.extra", "devise_export.json")


def export_saved_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write the SavedModel of a finished run into ``out_dir``.

    The model is written into a temporary folder beside ``out_dir`` and
    renamed into place once complete, so ``out_dir`` never holds half a
    model (TensorFlow Serving watches its model folder and would load one).

    Args:
        run_dir: a finished run directory (``devise-train``'s).
        out_dir: the folder to create, e.g. ``models/devise/1`` (TensorFlow
            Serving wants a numbered version folder under the model's).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        DeviseError: ``run_dir`` is not a finished run, its backbone does
            not give the features the model was trained on, or ``out_dir``
            exists (non-empty, without ``overwrite``) or cannot be written
            (then nothing is left behind and an older export is untouched).
    """
    run_dir, out_dir = os.fspath(run_dir), os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, overwrite)
    if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        raise DeviseError(f"{run_dir}: not a devise run directory (no {CONFIG_FILE})")
    check_run_complete(run_dir)
    model = DeViSEModel.load(run_dir)
    extractor = feature_extractor_from_config(read_run_config(run_dir).image_encoder)
    if model.image_fingerprint and extractor.fingerprint() != model.image_fingerprint:
        raise DeviseError(
            f"{run_dir}: the model was trained on '{model.image_fingerprint}' features, but the run's "
            f"image_encoder now gives '{extractor.fingerprint()}' (weights file changed?)"
        )
    archive = build_export_archive(model, extractor.model, extractor.input_size, extractor.resize)

    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = temporary_path(out_dir)
    try:
        archive.write_out(tmp, verbose=False)
        info = {
            "run_dir": os.path.abspath(run_dir),
            "model_fingerprint": model.fingerprint(),
            "image_fingerprint": model.image_fingerprint,
            "joint_dim": model.joint_dim,
            "signatures": {
                TEXT_SIGNATURE: {"input": "texts", "dtype": "string", "output": OUTPUT},
                IMAGE_SIGNATURE: {"input": "images", "dtype": "string (encoded image bytes)", "output": OUTPUT},
            },
            "image_size": list(extractor.input_size),
            "resize": extractor.resize,
            "not_matched": {"text": list(TEXT_NOT_MATCHED), "image": list(IMAGE_NOT_MATCHED)},
            "tensorflow": tf.__version__,
        }
        os.makedirs(os.path.join(tmp, os.path.dirname(EXPORT_INFO)), exist_ok=True)
        with open(os.path.join(tmp, EXPORT_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, ensure_ascii=False)
        replace_folder(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a read-only mount: the user's to fix, not a bug
            raise DeviseError(f"{out_dir}: cannot write the SavedModel ({exc.strerror or exc})") from None
        raise
    return out_dir


def build_export_archive(
    model: DeViSEModel, backbone: keras.Model, image_size: tuple[int, int], resize: str = "crop"
) -> keras.export.ExportArchive:
    """The ``encode_text`` and ``encode_image`` endpoints of a model, ready to write.

    Args:
        model: the trained model.
        backbone: RGB ``float32`` images in ``[0, 255]`` at ``image_size`` ->
            the features the model's image side takes (a feature
            extractor's ``model``).
        image_size: ``(height, width)`` the backbone takes.
        resize: ``"crop"`` or ``"pad"``, as the run extracted its features.
    """
    encoder = model.text_encoder
    tokenizer = CaptionTokenizer(encoder.vocabulary, lowercase=encoder.lowercase, max_length=encoder.max_length)
    projector = model.image_projector
    height, width = image_size

    archive = keras.export.ExportArchive()
    archive.track(model.keras_model)
    archive.track(backbone)
    archive.track(tokenizer)

    def encode_text(texts):
        return {OUTPUT: encoder(tokenizer.token_matrix(texts), training=False)}

    def encode_image(images):
        pixels = tf.map_fn(
            lambda data: tf.cast(load_image_ops(data, (height, width), resize), tf.float32),
            images,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
        )
        return {OUTPUT: projector(backbone(pixels, training=False), training=False)}

    archive.add_endpoint(TEXT_SIGNATURE, encode_text, input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    archive.add_endpoint(
        IMAGE_SIGNATURE, encode_image, input_signature=[tf.TensorSpec([None], tf.string, name="images")]
    )
    return archive


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DeviseError(f"{out_dir}: exists and is not a folder; choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise DeviseError(f"{out_dir}: already exists and is not empty; choose another --out or pass --overwrite")
    check_directory_writable(os.path.dirname(out_dir), "--out")
