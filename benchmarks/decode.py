"""Camera-size JPEGs: decoding at libjpeg's reduced scale against decoding every pixel.

Usage::

    python benchmarks/decode.py [--images 48] [--naive-images 12] [--passes 3] [--size 4032x3024]
                                [--workdir DIR]

Users point devise at folders of phone and camera photos (12 megapixels,
3-5 MB each), not at Pascal's 500x375 images. Decoding such a JPEG costs
more than EfficientNet-Lite0's forward pass, so on a CPU the decoding sets
the pace. ``load_image`` decodes a JPEG at 1/2, 1/4 or 1/8 scale inside
libjpeg when it stays twice the size it is resized to
(``devise.datasets.images.jpeg_scale``). This script measures, in one run
and alternating passes (best kept), with EfficientNet-Lite0 (ImageNet
weights, ``devise[demo]``) or ``--backbone vgg16`` (random weights):

* ``load_image`` per file: reduced (devise) against full-size decoding (the
  same function with the reduced scales switched off: the code before);
* end to end into a fresh feature cache, reduced against full-size;
* the naive loop (Pillow open, convert, resize, ``model.predict`` per file);
* how far the reduced decode moves the pixels and the features (cosine to
  the full-size decode's features).

The photos are scikit-image's sample photos enlarged to ``--size`` with
fine noise added, so that they hold camera-like detail and file sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from extract import end_to_end, naive, source_photos  # a sibling script


def write_camera_photos(folder: str, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """``n`` camera-size JPEGs in ``folder`` (kept between runs)."""
    os.makedirs(folder, exist_ok=True)
    width, height = size
    paths = [os.path.join(folder, f"camera{k:04d}-{width}x{height}.jpg") for k in range(n)]
    photos = source_photos()
    rng = np.random.default_rng(seed)
    for k, path in enumerate(paths):
        if os.path.exists(path):
            continue
        image = Image.fromarray(photos[k % len(photos)]).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        if k % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(path, quality=int(rng.integers(85, 96)))
    return paths


class FullSizeDecoding:
    """While active, ``load_image`` decodes every JPEG at full size (as before reduced decoding)."""

    def __enter__(self):
        from devise.datasets import images

        self._saved = images.JPEG_SCALES
        images.JPEG_SCALES = ()
        return self

    def __exit__(self, *exc):
        from devise.datasets import images

        images.JPEG_SCALES = self._saved


def time_load(paths: list[str], size: tuple[int, int]) -> float:
    from devise.datasets.images import load_image

    start = time.perf_counter()
    for path in paths:
        load_image(path, size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="camera-size files for the rates")
    parser.add_argument("--naive-images", type=int, default=12, help="files for the naive loop")
    parser.add_argument("--passes", type=int, default=3, help="alternating passes; each kind keeps its best")
    parser.add_argument("--size", default="4032x3024", help="photo width x height (default: 12 megapixels)")
    parser.add_argument("--workdir", help="folder for the photos and caches (default: a temporary one)")
    parser.add_argument(
        "--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (ImageNet) or vgg16 (random weights)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    width, height = (int(v) for v in args.size.lower().split("x"))

    from devise.datasets.images import jpeg_scale, load_image
    from devise.encoders import make_feature_extractor

    workdir = args.workdir or tempfile.mkdtemp(prefix="devise-bench-decode-")
    began = time.perf_counter()
    paths = write_camera_photos(os.path.join(workdir, "camera"), args.images, (width, height))
    megabytes = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; {len(paths)} JPEGs of {width}x{height}")
    print(f"({megabytes:.1f} MB each) in {workdir}, written in {time.perf_counter() - began:.0f}s")

    extractor = make_feature_extractor(args.backbone, weights=None if args.backbone == "vgg16" else "imagenet")
    size = extractor.input_size
    print(f"{args.backbone} input {size[1]}x{size[0]}: decoded at 1/{jpeg_scale(width, height, size)} scale")
    extractor.extract(np.zeros((extractor.batch_size, *size, 3), np.uint8))  # trace and warm up
    extractor.model.predict(np.zeros((1, *size, 3), np.float32), verbose=0)
    cache = os.path.join(workdir, "cache.h5")
    runs: dict[str, list[float]] = {k: [] for k in ("load_reduced", "load_full", "e2e_reduced", "e2e_full", "naive")}
    for _ in range(args.passes):
        runs["load_reduced"].append(time_load(paths, size))
        with FullSizeDecoding():
            runs["load_full"].append(time_load(paths, size))
        runs["e2e_reduced"].append(end_to_end(extractor, paths, cache))
        with FullSizeDecoding():
            runs["e2e_full"].append(end_to_end(extractor, paths, cache))
        runs["naive"].append(naive(extractor.model, paths[: args.naive_images], size))

    reduced = np.stack([load_image(p, size) for p in paths]).astype(np.int16)
    with FullSizeDecoding():
        full = np.stack([load_image(p, size) for p in paths]).astype(np.int16)
    diff = np.abs(reduced - full)
    a, b = extractor.extract(reduced.astype(np.uint8)), extractor.extract(full.astype(np.uint8))
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    n = len(paths)
    rate = {k: (args.naive_images if k == "naive" else n) / min(v) for k, v in runs.items()}
    print()
    print(
        f"load_image, one core:   reduced {1000 / rate['load_reduced']:6.1f} ms/file   full size "
        f"{1000 / rate['load_full']:6.1f} ms/file   ({rate['load_reduced'] / rate['load_full']:.2f}x)"
    )
    print(
        f"end to end (cache):     reduced {rate['e2e_reduced']:6.1f} images/s  full size "
        f"{rate['e2e_full']:6.1f} images/s  ({rate['e2e_reduced'] / rate['e2e_full']:.2f}x)"
    )
    print(
        f"naive loop:             {rate['naive']:6.1f} images/s; devise end to end / naive "
        f"{rate['e2e_reduced'] / rate['naive']:.1f}x (full-size decoding: {rate['e2e_full'] / rate['naive']:.1f}x)"
    )
    print(
        f"pixels, reduced vs full: mean {diff.mean():.3f} levels, 99th percentile "
        f"{np.percentile(diff, 99):.0f}, max {diff.max()}"
    )
    print(f"features, cosine reduced vs full: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    print("passes (s):", {k: [round(x, 2) for x in v] for k, v in runs.items()})
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
