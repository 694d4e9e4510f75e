"""``devise-export``: a finished run as a TensorFlow SavedModel for serving.

Usage::

    devise-export --run runs/demo-20261127-101500 --out models/devise/1
    devise-export --run runs/demo-20261127-101500 --out models/devise/1 --overwrite

The SavedModel has two signatures, ``encode_text`` (raw strings in) and
``encode_image`` (encoded image bytes in), each returning joint-space unit
vectors as ``embedding``; it needs TensorFlow only (see docs/export.md for
TensorFlow Serving).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command

PROG = "devise-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a trained DeViSE run as a TensorFlow SavedModel with encode_text and encode_image "
        "signatures (raw strings and encoded image bytes in, unit vectors out).",
        epilog="Example: devise-export --run runs/demo-20261127-101500 --out models/devise/1",
    )
    parser.add_argument("--run", required=True, metavar="RUN", help="a finished run directory written by devise-train")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the SavedModel folder to create (TensorFlow Serving wants a version folder: models/NAME/1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 an error, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    quiet_tensorflow()

    def body() -> int:
        from devise.export import IMAGE_SIGNATURE, TEXT_SIGNATURE, export_saved_model

        out = export_saved_model(args.run, args.out, overwrite=args.overwrite)
        print(f"{PROG}: wrote {out} (signatures {TEXT_SIGNATURE}, {IMAGE_SIGNATURE})", file=sys.stderr)
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
