"""``devise-search``: text-to-image search in an index, or captions for a photo.

Usage::

    devise-search --index pictures.h5 "a dog drinking water" -k 10
    devise-search --index pictures.h5 "two red circles" --json
    devise-search --index pictures.h5 "a red circle" --approximate [--nprobe 32] [--rebuild-approximate]
    devise-search --index pictures.h5 --like beach.jpg [--like beach2.jpg]       # more like these photos
    devise-search --index pictures.h5 --like beach.jpg "at sunset" --not "people" [--not-weight 0.5]
    devise-search --index pictures.h5 "a dog" --under 2024/summer --since 2024-06-01 --until 2024-08-31 --min-score 0.2
    devise-search --run RUN --image photo.jpg --captions captions.txt -k 5
    devise-search --run RUN --image photo.jpg            # candidates: the run's dataset captions

A text query (with ``--not`` terms and filters too) is embedded in numpy
from ``model.keras`` and never imports TensorFlow, which takes longer to
import than the whole search; photos (``--like`` outside the index,
``--image``) load the Keras model and the CNN. ``--text-backend keras``
embeds text with Keras as before.
"""

from __future__ import annotations

import argparse
import json
import os
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
    query = parser.add_argument_group(
        "combined queries",
        "the search vector is normalise(text_weight*text + like_weight*sum(photos) - not_weight*sum(not terms)) "
        "of unit embeddings in the joint space (docs/search.md)",
    )
    query.add_argument(
        "--like",
        action="append",
        default=[],
        metavar="PHOTO",
        help="rank by similarity to this photo (repeatable); a photo already in the index is not decoded again",
    )
    query.add_argument(
        "--not", dest="not_", action="append", default=[], metavar="TEXT", help="steer away from this text (repeatable)"
    )
    query.add_argument(
        "--text-weight", type=float, default=1.0, metavar="W", help="weight of the text query (default 1)"
    )
    query.add_argument(
        "--like-weight", type=float, default=1.0, metavar="W", help="weight of each --like photo (default 1)"
    )
    query.add_argument(
        "--not-weight", type=float, default=1.0, metavar="W", help="weight of each --not term (default 1)"
    )
    filters = parser.add_argument_group(
        "filters", "applied inside the top-k search: the result is the true top k of the matching photos"
    )
    filters.add_argument(
        "--min-score", type=float, metavar="S", help="drop results scoring below S (fewer than k may remain)"
    )
    filters.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="FOLDER",
        help="only photos in this folder of the index (repeatable)",
    )
    filters.add_argument(
        "--since",
        metavar="DATE",
        help="only photos dated on or after DATE (EXIF date, else mtime; YYYY-MM-DD local day, or ISO date-time)",
    )
    filters.add_argument(
        "--until", metavar="DATE", help="only photos dated on or before DATE (a day counts to its end)"
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
    parser.add_argument(
        "--text-backend",
        choices=("auto", "numpy", "keras"),
        default="auto",
        help="how text is embedded: numpy, without importing TensorFlow (auto, the default, falls back to Keras "
        "for a model the numpy path does not reproduce), or Keras",
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
    if not hits:
        print(f"{PROG}: no results (every image was filtered out, or the index is empty)", file=sys.stderr)


def _describe(args: argparse.Namespace) -> str:
    """The combined query in words, for the output's header."""
    parts = [repr(args.query)] if args.query is not None else []
    parts += [f"like {p}" for p in args.like] + [f"not {t!r}" for t in args.not_]
    return " + ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1 or args.k > 10_000:
        parser.error("-k must be between 1 and 10000")
    if args.nprobe < 1:
        parser.error("--nprobe must be at least 1")
    if args.rebuild_approximate and not args.approximate:
        parser.error("--rebuild-approximate goes with --approximate")
    searching = args.query is not None or args.like
    if args.image is None and (not searching or args.index is None):
        parser.error("give a text query and/or --like PHOTO with --index, or --image (with --run or --index)")
    combined = args.like or args.not_ or args.under or args.since or args.until or args.min_score is not None
    if args.image is not None and combined:
        parser.error(
            "--like, --not, --under, --since, --until and --min-score search an index; they do not go with --image"
        )
    for photo in args.like:  # before the (slow) model load
        if not os.path.isfile(photo):
            parser.error(f"--like {photo}: no such photo file")
    if args.approximate and (args.under or args.since or args.until):
        parser.error(
            "--under, --since and --until need the exact search (FAISS cannot filter inside its top-k); drop --approximate"
        )
    for name in ("text_weight", "like_weight", "not_weight"):
        value = getattr(args, name)
        if not (value >= 0 and value < float("inf")):
            parser.error(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
    if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
        parser.error(f"--min-score is a cosine score between -1 and 1, got {args.min_score}")
    if args.since is not None or args.until is not None:
        from devise.errors import QueryError
        from devise.search.filters import parse_date

        for name in ("since", "until"):
            try:
                if getattr(args, name) is not None:
                    parse_date(getattr(args, name))
            except QueryError as exc:
                parser.error(f"--{name}: {exc}")
    if args.image is not None and args.run is None and args.index is None:
        parser.error("--image needs --run (or an --index that names its run)")
    quiet_tensorflow()

    def body() -> int:
        from devise.search.engine import SearchEngine, run_captions

        # Before the (slow) model load, so a bad file is reported at once.
        captions = read_lines(args.captions, "captions") if args.image is not None and args.captions else None
        engine = SearchEngine.load(args.run, args.index, text_backend=args.text_backend)
        if args.image is not None:
            if captions is None:
                captions = run_captions(engine.run_dir)
            _print_hits("image", args.image, engine.annotate(args.image, captions, k=args.k), "caption", args.json)
            return 0
        if args.approximate:
            engine.use_approximate(nprobe=args.nprobe, rebuild=args.rebuild_approximate)
        # Refuses an empty query, one with no known word, an unreadable photo or a bad filter.
        hits = engine.search(
            args.query,
            k=args.k,
            like=args.like,
            not_=args.not_,
            under=args.under,
            since=args.since,
            until=args.until,
            min_score=args.min_score,
            text_weight=args.text_weight,
            like_weight=args.like_weight,
            not_weight=args.not_weight,
        )
        texts = [t for t in [args.query, *args.not_] if t is not None]
        unknown = list(dict.fromkeys(w for t in texts for w in engine.unknown_words(t)))
        subject = args.query if not combined else _describe(args)
        _print_hits("query", subject, hits, "path", args.json, unknown)
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
