"""A GPU check, ready to run: extraction and a short training on the GPU, checked against the CPU.

Usage (from the repository root; ``benchmarks/gpu_check.sh`` installs first)::

    python benchmarks/gpu_check.py [--images 1000] [--compare 32] [--epochs 3]

What it does, on generated ``shapes`` images (the demo's dataset, written to
a temporary folder; nothing is downloaded):

1. **EfficientNet-Lite0** (the offline ImageNet weights of the ``demo``
   extra): features of every image on the GPU, images/s (end to end, from
   JPEG files; a first call on 8 images, which builds and traces the network,
   is not counted); the first ``--compare`` images again on the CPU, and the two
   must agree: every image's cosine similarity >= 0.999 and the largest
   difference <= 2% of the largest feature value (TensorFlow uses TF32 for
   float32 convolutions and matrix products on Ampere and newer GPUs, about
   three significant digits, so bit equality is not expected).
2. **VGG16 with random weights** (``weights=None``: no download, the same
   seed on both devices): fc7 features on the GPU and on the CPU for
   ``--compare`` / 2 images (/ 4 without a GPU), same tolerance, and images/s.
3. **Mixed precision extraction** (``mixed_float16``, GPU only): the
   EfficientNet-Lite0 features must stay within cosine >= 0.99 of float32.
4. **Training**: ``devise-train``'s Trainer on the same images (the demo
   config, ``--epochs`` epochs), in float32 and with
   ``trainer.mixed_precision`` (``float16`` on a GPU, ``bfloat16`` without
   one); each must end with a finite, falling loss and text-to-image R@10
   above chance, with its variables on the GPU when there is one. Prints the
   median training step time (epochs after the first).

Without a GPU it says "no GPU found" and runs the same steps on the CPU
(mixed precision extraction is then skipped: devise refuses it on a CPU),
which proves the script works but checks nothing about a GPU. Exit code 0
when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from devise.datasets.shapes import generate_shapes
from devise.encoders import make_feature_extractor
from devise.training import Trainer, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COSINE_MIN = 0.999
RELATIVE_MAX = 0.02
MIXED_COSINE_MIN = 0.99

results: list[tuple[str, bool]] = []


def check(name: str, ok: bool, detail: str) -> None:
    results.append((name, ok))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The smallest per-row cosine similarity, and the largest difference relative to the largest value."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-30), 1.0)
    return float(cosine.min()), float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def extract(backbone: str, paths: list[str], device: str, **options) -> tuple[np.ndarray, float]:
    """Features of ``paths`` and images/s (a first call on 8 images, which builds the network, not counted)."""
    keras.utils.set_random_seed(0)  # the same random weights on every device (VGG16 with weights=None)
    extractor = make_feature_extractor(backbone, device=device, **options)
    extractor.extract_files(paths[:8], progress=False)
    start = time.perf_counter()
    result = extractor.extract_files(paths, progress=False)
    seconds = time.perf_counter() - start
    if result.failures:
        raise RuntimeError(f"{backbone}: {len(result.failures)} image(s) failed, first: {result.failures[0]}")
    return result.features, len(paths) / seconds


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps: list[tuple[int, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append((self.epoch, time.perf_counter() - self._start))

    def median_ms(self) -> float:
        later = [s for e, s in self.steps if e > 0] or [s for _, s in self.steps]
        return 1000 * statistics.median(later)


def train(work: str, per_category: int, epochs: int, device: str | None, precision: str, gpu: bool) -> None:
    overrides = [
        f"data.root={work}/shapes",
        f"data.shapes.images_per_category={per_category}",
        f"image_encoder.cache_dir={work}/cache",
        f"output_dir={work}/runs",
        f"trainer.epochs={epochs}",
        f"trainer.mixed_precision='{precision}'",  # quoted: YAML reads a bare off as false
        "word_vectors.max_words=20000",
    ]
    held_out = max(1, per_category // 10)  # images per category for val and for test (the demo's 40/5/5 at 50)
    overrides.append(f"data.split={{train: {per_category - 2 * held_out}, val: {held_out}, test: {held_out}, seed: 0}}")
    if device is not None:
        overrides.append(f"image_encoder.device={device}")
    timer = StepTimer()
    start = time.perf_counter()
    result = Trainer(
        load_config(os.path.join(REPO, "configs", "demo.yaml"), overrides), verbose=False, callbacks=[timer]
    ).run()
    seconds = time.perf_counter() - start
    losses = result.history["loss"]
    t2i = result.metrics["text_to_image"]["R@10"]
    chance = result.metrics["chance"]["text_to_image"]["R@10"]
    placed = {v.value.device for v in result.model.keras_model.trainable_variables}
    on_gpu = all("GPU" in d for d in placed)
    name = f"training, {precision if precision != 'off' else 'float32'}"
    ok = all(np.isfinite(losses)) and losses[-1] < losses[0] and t2i > chance and (on_gpu or not gpu)
    check(
        name,
        ok,
        f"{len(timer.steps)} steps, median step {timer.median_ms():.1f} ms, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"t2i R@10 {t2i:.1f} (chance {chance:.1f}), variables on {sorted(placed)[0]}"
        f"{' and others' if len(placed) > 1 else ''}, {seconds:.0f} s in all",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="images (default 1000 with a GPU, 80 without)")
    parser.add_argument("--compare", type=int, default=32, help="images extracted on the CPU too")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 3 with a GPU, 2 without)")
    parser.add_argument("--workdir", help="where to generate images and runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        print(
            f"GPU found: {details.get('device_name', gpus[0].name)} ({len(gpus)} GPU(s)), TensorFlow {tf.__version__}"
        )
        device = "/GPU:0"
    else:
        print(
            f"no GPU found (TensorFlow {tf.__version__} sees none): running the CPU path only; "
            "this proves the script works, not the GPU",
            flush=True,
        )
        device = "/CPU:0"
    images = args.images or (1000 if gpus else 80)
    per_category = max(3, images // 20)
    epochs = args.epochs or (3 if gpus else 2)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or scratch
        root = generate_shapes(os.path.join(work, "shapes"), images_per_category=per_category)
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        compare = min(args.compare, len(paths))
        print(f"{len(paths)} generated images in {root}", flush=True)

        lite, rate = extract("efficientnet_lite0", paths, device)
        lite_cpu, rate_cpu = extract("efficientnet_lite0", paths[:compare], "/CPU:0")
        cosine, relative = agreement(lite_cpu, lite[:compare])
        check(
            f"EfficientNet-Lite0 {device} vs CPU",
            cosine >= COSINE_MIN and relative <= RELATIVE_MAX,
            f"{compare} images: min cosine {cosine:.6f} (>= {COSINE_MIN}), max diff {relative:.2e} of the largest "
            f"value (<= {RELATIVE_MAX}); {rate:.0f} images/s on {device}, {rate_cpu:.0f} on the CPU",
        )

        few = paths[: max(2, compare // (2 if gpus else 4))]  # VGG16 runs at about 1 image/s on 2 CPU cores
        vgg, vgg_rate = extract("vgg16", few, device, weights=None)
        vgg_cpu, vgg_rate_cpu = extract("vgg16", few, "/CPU:0", weights=None)
        cosine, relative = agreement(vgg_cpu, vgg)
        check(
            f"VGG16 fc7 (random weights) {device} vs CPU",
            cosine >= COSINE_MIN and relative <= RELATIVE_MAX,
            f"{len(few)} images: min cosine {cosine:.6f}, max diff {relative:.2e}; "
            f"{vgg_rate:.1f} images/s on {device}, {vgg_rate_cpu:.1f} on the CPU",
        )

        if gpus:
            mixed, mixed_rate = extract("efficientnet_lite0", paths, device, mixed_precision=True)
            cosine, relative = agreement(lite, mixed)
            check(
                "EfficientNet-Lite0 mixed_float16 vs float32 on the GPU",
                cosine >= MIXED_COSINE_MIN,
                f"min cosine {cosine:.5f} (>= {MIXED_COSINE_MIN}), max diff {relative:.2e}; {mixed_rate:.0f} images/s",
            )
        else:
            print("skip  mixed precision extraction: GPU only (devise refuses it on a CPU)")

        for precision in ("off", "float16" if gpus else "bfloat16"):
            train(work, per_category, epochs, device if gpus else None, precision, bool(gpus))

    failed = [name for name, ok in results if not ok]
    print(
        f"{len(results) - len(failed)} of {len(results)} checks passed in {time.perf_counter() - begin:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + ("" if gpus else " (CPU only: no GPU found)")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
