"""``devise-extract``: image features of a folder or of a config's dataset into a feature cache.

Usage::

    devise-extract --images ~/Pictures --out pictures-features.h5 image_encoder.backbone=vgg16
    devise-extract --config configs/pascal.yaml data.root=/data/pascal-sentences
    devise-extract --images photos/ --out f.h5 image_encoder.backbone=keras_application \\
        image_encoder.application=ResNet50 --json
    devise-extract --compact pictures-features.h5 --drop-missing

With ``--config``, the cache is the one ``devise-train`` reads for that
config (``image_encoder.cache_dir``), so training afterwards extracts
nothing. Both go through the same code: :meth:`devise.encoders.FeatureCache.update`,
which reads images with :meth:`devise.encoders.FeatureExtractor.iter_features`
(also ``devise-index``'s reader). Rerunning extracts only new or changed
files; an interrupted run keeps every committed chunk and resumes after it.
``--compact`` rewrites a cache without the rows of files that changed since
(and, with ``--drop-missing``, of files that are gone); it needs no
TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command

PROG = "devise-extract"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Extract CNN image features of a folder (recursively) or of a config's dataset into an "
        "HDF5 feature cache. Only new or changed images are extracted; bad images are skipped and listed.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (JPEG, PNG, WebP, GIF; recursive)")
    source.add_argument("--config", help="experiment YAML whose data section names the images")
    source.add_argument(
        "--compact",
        metavar="CACHE",
        help="rewrite this feature cache without the rows of files changed since they were extracted",
    )
    parser.add_argument(
        "--drop-missing", action="store_true", help="with --compact: also drop the rows of files that are gone"
    )
    parser.add_argument(
        "--out",
        help="feature cache file (.h5) to create or extend (default: the one devise-train uses, "
        "under image_encoder.cache_dir)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=512, help="images per committed append to the cache (default 512)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. image_encoder.backbone=vgg16 image_encoder.batch_size=64",
    )
    return parser


def _images_of_config(config) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """``(ids, paths, problems)`` of every image the config's dataset names."""
    from devise.datasets.from_config import load_records
    from devise.datasets.records import unique_images
    from devise.datasets.report import DataReport

    if config.data.dataset == "folders":  # class folders: every image under the root
        ids, paths = _images_of_folder(config.data.root)
        return ids, paths, []
    report = DataReport(strict=config.data.strict)
    images = unique_images(load_records(config.data, report))
    problems = [(p.path if p.line is None else f"{p.path}:{p.line}", p.reason) for p in report.problems]
    return [r.image_id for r in images], [r.image_path for r in images], problems


def _images_of_folder(folder: str) -> tuple[list[str], list[str]]:
    from devise.search.scan import scan_images

    files = scan_images(folder)
    return [f.id for f in files], [f.path for f in files]


def _compact(args) -> int:
    from devise.encoders.feature_cache import FeatureCache
    from devise.encoders.feature_store import stored_fingerprint

    start = time.monotonic()
    result = FeatureCache(args.compact, stored_fingerprint(args.compact)).compact(drop_missing=args.drop_missing)
    if args.json:
        print(json.dumps({"cache": os.path.abspath(args.compact), **dataclasses.asdict(result)}, indent=2))
    else:
        print(f"{args.compact}: {result.summary()}, in {time.monotonic() - start:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint_every < 1:
        parser.error("--checkpoint-every must be >= 1")
    if args.compact and (args.overrides or args.out):
        parser.error("--compact takes the cache file alone (no --out, no key=value overrides)")
    if args.drop_missing and not args.compact:
        parser.error("--drop-missing goes with --compact")
    quiet_tensorflow()

    def body() -> int:
        if args.compact:
            return _compact(args)
        from devise.config import load_config
        from devise.encoders import FeatureCache, default_cache_path, feature_extractor_from_config
        from devise.errors import DeviseError

        config = load_config(args.config, args.overrides)
        if args.images:
            ids, paths = _images_of_folder(args.images)
            problems: list[tuple[str, str]] = []
        else:
            ids, paths, problems = _images_of_config(config)
        if not paths:
            raise DeviseError(f"{args.images or args.config}: no images found")
        extractor = feature_extractor_from_config(config.image_encoder)
        out = args.out or default_cache_path(config.image_encoder.cache_dir, extractor)
        if os.path.isdir(out):
            raise DeviseError(f"{out}: is a folder; --out names the cache file (.h5)")
        cache = FeatureCache(out, extractor.fingerprint())
        start = time.monotonic()
        result = cache.update(
            extractor, ids, paths, progress=not args.quiet and not args.json, checkpoint_every=args.checkpoint_every
        )
        seconds = time.monotonic() - start
        failures = problems + result.failures
        extracted = result.computed - len(result.failures)
        rate = extracted / seconds if seconds > 0 else 0.0
        if args.json:
            summary = {
                "cache": os.path.abspath(out),
                "fingerprint": extractor.fingerprint(),
                "images": result.requested,
                "extracted": extracted,
                "cached": result.cached,
                "skipped": len(failures),
                "seconds": round(seconds, 3),
                "images_per_second": round(rate, 2),
                "failures": [{"path": path, "reason": reason} for path, reason in failures],
            }
            print(json.dumps(summary, indent=2))
        else:
            print(
                f"{out}: {result.requested} images: {extracted} extracted ({rate:.1f} images/s), "
                f"{result.cached} from the cache, {len(failures)} skipped, in {seconds:.1f}s"
            )
            for path, reason in failures:
                print(f"  skipped {path}: {reason}", file=sys.stderr)
        return 0

    return run_command(PROG, body)


console_main = console_entry(main, onednn=True)

if __name__ == "__main__":
    console_main()
