"""``devise-index``: embed a folder of images into an index file (incrementally).

Usage::

    devise-index --run runs/demo-20261127-101500 --images ~/Pictures --out pictures.h5
    devise-index --run RUN --images ~/Pictures --out pictures.h5 --features features/manifest.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command

PROG = "devise-index"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Embed every image under a folder (JPEG, PNG, WebP, GIF; recursive) into an index "
        "file. Rerunning embeds only new or changed files and drops deleted ones.",
    )
    parser.add_argument("--run", required=True, help="training run directory (from devise-train)")
    parser.add_argument("--images", required=True, help="folder of images to index")
    parser.add_argument("--out", required=True, help="index file to create or update (.h5)")
    parser.add_argument(
        "--features",
        help="manifest.json (or its folder) from devise-beam-extract: take the images' embeddings, or features, "
        "from its verified shards instead of extracting them; images it lacks are extracted",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()

    def body() -> int:
        from devise.search.engine import SearchEngine

        engine = SearchEngine.load(args.run)
        if args.features:
            report = _update_from_shards(engine, args)
        else:
            report = engine.update_index(args.out, args.images, progress=not args.quiet)
        print(f"{args.out}: {report.summary()}")
        for path, reason in report.failures:
            print(f"  skipped {path}: {reason}", file=sys.stderr)
        return 0

    return run_command(PROG, body)


def _update_from_shards(engine, args):
    """``update_index`` with embeddings read from a devise-beam-extract manifest's shards first."""
    from devise.encoders.feature_shards import FeatureShards, embed_from_shards
    from devise.search.index import update_index

    shards = FeatureShards.open(args.features, extractor_fingerprint=engine.extractor.fingerprint())
    counts: dict[str, int] = {}
    embed = embed_from_shards(
        shards,
        model_fingerprint=engine.fingerprint,
        project=lambda features: engine.model.embed_image_features(features),
        fallback=engine.embed_image_files,
        counts=counts,
    )
    report = update_index(
        args.out,
        args.images,
        model_fingerprint=engine.fingerprint,
        run_dir=engine.run_dir or "",
        embed=embed,
        progress=not args.quiet,
    )
    what = "embeddings" if shards.model_fingerprint == engine.fingerprint else "features"
    print(
        f"{shards.path}: {counts['from_shards']} images' {what} read from its shards; "
        f"{counts['not_in_shards']} not in them went to the extractor"
    )
    return report


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
