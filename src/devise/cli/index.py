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
        report = engine.update_index(args.out, args.images, progress=not args.quiet, features=args.features)
        if report.shards:
            print(report.shards)
        print(f"{args.out}: {report.summary()}")
        for path, reason in report.failures:
            print(f"  skipped {path}: {reason}", file=sys.stderr)
        return 0

    return run_command(PROG, body)


console_main = console_entry(main, onednn=True)

if __name__ == "__main__":
    console_main()
