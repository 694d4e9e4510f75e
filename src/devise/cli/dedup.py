"""``devise-dedup``: groups of near-identical images (re-encoded, resized, slightly cropped copies) in an index.

Usage::

    devise-dedup --index pictures.h5
    devise-dedup --index pictures.h5 --threshold 0.99 --json

Needs the index and the indexed files, not the model (no TensorFlow): the
index's embeddings propose candidates, the files' pixels confirm them (see
:mod:`devise.search.dedup`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, run_command

PROG = "devise-dedup"


def build_parser() -> argparse.ArgumentParser:
    from devise.search.dedup import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="List groups of near-identical images in an index (re-encoded, resized or slightly "
        "cropped copies), largest groups first, with each image's score to its nearest copy.",
    )
    parser.add_argument("--index", required=True, help="index file from devise-index")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"pixel score (up to 1) at or above which two images are copies (default {DEFAULT_THRESHOLD}; "
        "0.99 for drawings and renders, whose distinct images can differ by a few pixels)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=DEFAULT_NEIGHBOURS,
        help=f"candidates checked per image: its nearest in the index (default {DEFAULT_NEIGHBOURS})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a list")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _print_groups(groups, skipped, images: int, threshold: float) -> None:
    copies = sum(len(g) for g in groups)
    print(f"{len(groups)} group(s) of near-duplicates, {copies} of {images} images (threshold {threshold:g})")
    for number, group in enumerate(groups, 1):
        print(f"\ngroup {number}: {len(group)} images, best score {group.best_score:.3f}")
        for member in group.members:
            print(f"  {member.score:.3f}  {member.id}")
    if skipped:
        print(
            f"{PROG}: note: {len(skipped)} image(s) could not be read and were left out, e.g. {skipped[0][1]}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        parser.error("--threshold must be in (0, 1]")
    if not 1 <= args.neighbours <= 1000:
        parser.error("--neighbours must be between 1 and 1000")

    def body() -> int:
        from devise.search.dedup import DuplicateFinder
        from devise.search.index import ImageIndex

        index = ImageIndex.open(args.index)
        finder = DuplicateFinder(index, neighbours=args.neighbours, progress=not args.quiet)
        groups = finder.groups(args.threshold)
        if args.json:
            print(
                json.dumps(
                    {
                        "index": index.path,
                        "image_root": index.image_root,
                        "images": len(index),
                        "threshold": args.threshold,
                        "groups": [g.to_dict() for g in groups],
                        "skipped": [{"id": image_id, "reason": reason} for image_id, reason in finder.skipped],
                    },
                    indent=2,
                )
            )
        else:
            _print_groups(groups, finder.skipped, len(index), args.threshold)
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
