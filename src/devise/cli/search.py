"""``devise-search``: text-to-image search in an index, or captions for a photo.

Usage::

    devise-search --index pictures.h5 "a dog drinking water" -k 10
    devise-search --index pictures.h5 "two red circles" --json
    devise-search --run RUN --image photo.jpg --captions captions.txt -k 5
    devise-search --run RUN --image photo.jpg            # candidates: the run's dataset captions
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command
from devise.errors import DeviseError

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
    return parser


def _read_captions(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            captions = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DeviseError(f"{path}: captions file not found") from None
    except UnicodeDecodeError as exc:
        raise DeviseError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not captions:
        raise DeviseError(f"{path}: no captions in the file (one caption per line)")
    return captions


def _dataset_captions(run_dir: str) -> list[str]:
    import os

    from devise.datasets.report import DataReport
    from devise.training.config import load_config
    from devise.training.trainer import Trainer

    trainer = Trainer(load_config(os.path.join(run_dir, "config.yaml")), verbose=False)
    return [r.caption for r in trainer.load_records(DataReport())]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1 or args.k > 10_000:
        parser.error("-k must be between 1 and 10000")
    if args.image is None and (args.query is None or args.index is None):
        parser.error("give a text query and --index, or --image (with --run or --index)")
    if args.image is not None and args.run is None and args.index is None:
        parser.error("--image needs --run (or an --index that names its run)")
    quiet_tensorflow()

    def body() -> int:
        from devise.search.engine import SearchEngine

        engine = SearchEngine.load(args.run, args.index)
        if args.image is not None:
            captions = _read_captions(args.captions) if args.captions else _dataset_captions(engine.run_dir)
            hits = engine.annotate(args.image, captions, k=args.k)
            if args.json:
                print(json.dumps({"image": args.image, "results": [h.to_dict() for h in hits]}, indent=2))
            else:
                for hit in hits:
                    print(f"{hit.rank:>3}  {hit.score:+.3f}  {hit.caption}")
            return 0
        if args.approximate:
            engine.use_approximate(nprobe=args.nprobe)
        hits = engine.search(args.query, k=args.k)
        if args.json:
            print(json.dumps({"query": args.query, "results": [h.to_dict() for h in hits]}, indent=2))
        else:
            for hit in hits:
                print(f"{hit.rank:>3}  {hit.score:+.3f}  {hit.path}")
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
