"""``devise-search``: text-to-image search in an index, or captions for a photo.

Usage::

    devise-search --index pictures.h5 "a dog drinking water" -k 10
    devise-search --index pictures.h5 "two red circles" --json
    devise-search --index pictures.h5 "a red circle" --approximate [--nprobe 32] [--rebuild-approximate]
    devise-search --run RUN --image photo.jpg --captions captions.txt -k 5
    devise-search --run RUN --image photo.jpg            # candidates: the run's dataset captions
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, read_lines, run_command

PROG = "devise-search"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Search an image index with a text query, or rank captions for an image.",
    )
    parser.add_argument("query", nargs="?", help="text query (text-to-image search)")
    parser.add_argument("--index", help="index file from devise-index")
    parser.add_argument("--run", help="training run directory (default: the run recorded in the index)")
    parser.add_argument("--image", help="annotate this image instead: rank candidate captions for it")
    parser.add_argument(
        "--captions", help="candidate captions for --image, one per line (default: the run's dataset captions)"
    )
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--approximate",
        action="store_true",
        help="search a FAISS index (pip install 'devise[ann]'), built next to the index on first use",
    )
    parser.add_argument("--nprobe", type=int, default=16, help="FAISS clusters scanned per query (default 16)")
    parser.add_argument(
        "--rebuild-approximate",
        action="store_true",
        help="with --approximate: rebuild the FAISS index even if the one on disk looks valid",
    )
    return parser


def _print_hits(kind: str, subject: str, hits, field: str, as_json: bool, unknown: list[str] | None = None) -> None:
    """Ranked hits as JSON (``{kind: subject, "results": [...]}``) or one line each: rank, score, ``field``.

    ``unknown``: the query's words without a word vector, reported (in the
    JSON as ``unknown_words``, otherwise on stderr) because they were ignored.
    """
    if as_json:
        extra = {"unknown_words": unknown} if unknown is not None else {}
        print(json.dumps({kind: subject, **extra, "results": [h.to_dict() for h in hits]}, indent=2))
        return
    if unknown:
        print(f"{PROG}: note: no word vector for {', '.join(map(repr, unknown))}; ignored", file=sys.stderr)
    for hit in hits:
        print(f"{hit.rank:>3}  {hit.score:+.3f}  {getattr(hit, field)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1 or args.k > 10_000:
        parser.error("-k must be between 1 and 10000")
    if args.nprobe < 1:
        parser.error("--nprobe must be at least 1")
    if args.rebuild_approximate and not args.approximate:
        parser.error("--rebuild-approximate goes with --approximate")
    if args.image is None and (args.query is None or args.index is None):
        parser.error("give a text query and --index, or --image (with --run or --index)")
    if args.image is not None and args.run is None and args.index is None:
        parser.error("--image needs --run (or an --index that names its run)")
    quiet_tensorflow()

    def body() -> int:
        from devise.search.engine import SearchEngine, run_captions

        # Before the (slow) model load, so a bad file is reported at once.
        captions = read_lines(args.captions, "captions") if args.image is not None and args.captions else None
        engine = SearchEngine.load(args.run, args.index)
        if args.image is not None:
            if captions is None:
                captions = run_captions(engine.run_dir)
            _print_hits("image", args.image, engine.annotate(args.image, captions, k=args.k), "caption", args.json)
            return 0
        if args.approximate:
            engine.use_approximate(nprobe=args.nprobe, rebuild=args.rebuild_approximate)
        hits = engine.search(args.query, k=args.k)  # refuses an empty query or one with no known word
        _print_hits("query", args.query, hits, "path", args.json, engine.unknown_words(args.query))
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
