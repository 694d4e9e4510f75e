"""``devise-classify``: open-vocabulary classification of photos against any label words.

Usage::

    devise-classify --run RUN photo.jpg other.png --labels "cat,dog,school bus"
    devise-classify --run RUN photos/*.jpg --labels-file labels.txt -k 3 --json

Works with caption-trained runs (``configs/demo.yaml``, ``configs/captions.yaml``)
and label-trained zero-shot runs (``configs/zeroshot.yaml``) alike: each label
is embedded like a caption, so any word the model's word vectors know can be
a label, whether or not training saw it. Labels with words the vectors lack
are reported; a label with no known word stops the command (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, read_lines, run_command

PROG = "devise-classify"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rank label words for each photo with a trained DeViSE model (open vocabulary).",
        epilog='Example: devise-classify --run runs/demo-20261127-101500 cat.jpg --labels "cat,dog,school bus"',
    )
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files to classify")
    parser.add_argument("--run", required=True, metavar="RUN", help="a run directory written by devise-train")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, e.g. "cat,dog,school bus"')
    labels.add_argument("--labels-file", metavar="FILE", help="labels, one per line (UTF-8)")
    parser.add_argument("-k", type=int, default=5, help="labels shown per photo (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 a photo failed or an error, 2 bad usage or labels)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1 or args.k > 10_000:
        parser.error("-k must be between 1 and 10000")
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        if not labels:
            parser.error('--labels: no label given (comma-separated, e.g. "cat,dog")')
    quiet_tensorflow()

    def body() -> int:
        from devise.search.engine import SearchEngine

        chosen = labels if args.labels is not None else read_lines(args.labels_file, "labels")
        engine = SearchEngine.load(args.run)
        ranked, failures = engine.classify(args.photos, chosen, k=args.k)
        unknown = {label: engine.unknown_words(label) for label in dict.fromkeys(chosen)}
        unknown = {label: words for label, words in unknown.items() if words}
        if args.json:
            out = {
                "labels": list(dict.fromkeys(chosen)),
                "unknown_words": unknown,
                "results": [
                    {
                        "image": str(photo),
                        "labels": None
                        if hits is None
                        else [{"rank": h.rank, "label": h.caption, "score": h.score} for h in hits],
                    }
                    for photo, hits in zip(args.photos, ranked)
                ],
                "failures": [{"image": path, "reason": reason} for path, reason in failures],
            }
            print(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            for label, words in unknown.items():
                print(
                    f"{PROG}: note: label {label!r}: no word vector for {', '.join(map(repr, words))}; ignored",
                    file=sys.stderr,
                )
            for photo, hits in zip(args.photos, ranked):
                if hits is None:
                    continue
                print(photo)
                for hit in hits:
                    print(f"  {hit.rank:>3}  {hit.score:+.3f}  {hit.caption}")
        for path, reason in failures:
            print(f"{PROG}: skipped {path}: {reason}", file=sys.stderr)
        return 1 if failures else 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
