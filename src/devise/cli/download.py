"""``devise-download``: fetch Pascal Sentences or GloVe, resumably.

Usage::

    devise-download pascal --dest data/pascal [--url URL] [--workers 8]
    devise-download glove --dest data/glove [--variant 6B] [--dim 300] [--url URL]

Rerunning the same command after a failure or Ctrl-C fetches only what is
missing: finished files are verified and kept, partial ``.part`` files
resume. The exit code is 0 only when everything is in place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from devise.cli.common import console_entry, run_command

PROG = "devise-download"


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting whole numbers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from devise.datasets.pascal import PASCAL_URL
    from devise.embeddings.glove_download import GLOVE_VARIANTS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Download Pascal Sentences or GloVe vectors; rerun to resume.",
        epilog="Example: devise-download pascal --dest data/pascal",
    )
    commands = parser.add_subparsers(dest="what", required=True, metavar="{pascal,glove}")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--dest", required=True, help="folder to download into")
        sub.add_argument("--retries", type=_whole_number(0), default=3, help="extra attempts per file (default 3)")
        sub.add_argument("--timeout", type=_seconds, default=30.0, help="seconds per connection and read (default 30)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")

    pascal = commands.add_parser(
        "pascal",
        help="the Pascal Sentences images and captions",
        description="Download the 1,000 Pascal Sentences images and their captions "
        "into DEST/dataset and DEST/sentence.",
    )
    common(pascal)
    pascal.add_argument("--url", default=PASCAL_URL, help=f"page listing the images (default {PASCAL_URL})")
    pascal.add_argument("--workers", type=_whole_number(1), default=8, help="parallel downloads (default 8)")

    glove = commands.add_parser(
        "glove",
        help="a GloVe word-vector zip archive",
        description="Download a GloVe zip archive into DEST and check it.",
    )
    common(glove)
    glove.add_argument("--variant", default="6B", choices=sorted(GLOVE_VARIANTS), help="which archive (default 6B)")
    glove.add_argument("--dim", type=int, help="the vector size you will use (checked against the variant)")
    glove.add_argument("--url", help="download from this mirror instead of Stanford")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 when everything is downloaded, 1 if anything failed, 2 usage, 130 Ctrl-C."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        try:
            if args.what == "pascal":
                return _pascal(args)
            return _glove(args)
        except KeyboardInterrupt:
            print(
                f"{PROG}: stopped; finished files are kept and partial ones (*.part) "
                "resume when you rerun the same command",
                file=sys.stderr,
            )
            raise

    return run_command(PROG, body)


def _pascal(args: argparse.Namespace) -> int:
    from devise.datasets.pascal_download import download_pascal

    report = download_pascal(
        args.dest,
        url=args.url,
        workers=args.workers,
        retries=args.retries,
        timeout=args.timeout,
        progress=not args.quiet,
    )
    print(report.summary())
    print(f"Manifest: {report.manifest_path}")
    return 0 if report.complete else 1


def _glove(args: argparse.Namespace) -> int:
    from devise.embeddings.glove_download import download_glove, glove_variant

    spec = glove_variant(args.variant)
    members = [spec.member(args.dim)] if args.dim is not None else list(spec.members())
    path = download_glove(
        args.dest,
        variant=args.variant,
        url=args.url,
        progress=not args.quiet,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(f"GloVe {spec.name}: {path} (verified zip)")
    print(
        f"Use it without unzipping: word_vectors.path={path} with word_vectors.dim set "
        f"(members: {', '.join(members)}), or word_vectors.path={path}::{members[-1]}"
    )
    return 0


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
