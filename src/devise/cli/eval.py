"""``devise-eval``: re-evaluate a trained run on one of its splits.

Usage::

    devise-eval --run runs/demo-20261127-101500               # test split
    devise-eval --run runs/demo-20261127-101500 --split val --json

Writes ``eval-<split>.json`` and ``eval-<split>.md`` into the run directory
and prints the overall table (with chance levels) and the per-category one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command

PROG = "devise-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a trained DeViSE run directory on one of its data splits "
        "(R@K, medr, meanr in both directions, overall and per category).",
        epilog="Example: devise-eval --run runs/demo-20261127-101500 --split val",
    )
    parser.add_argument("--run", required=True, metavar="RUN", help="a run directory written by devise-train")
    parser.add_argument(
        "--split", choices=("train", "val", "test"), default="test", help="which split to evaluate (default: test)"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of the tables")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 bad config or usage)."""
    args = build_parser().parse_args(argv)
    quiet_tensorflow()

    def body() -> int:
        from devise.training.evaluate_run import evaluate_run
        from devise.training.evaluation import format_category_table, format_metrics_table

        metrics = evaluate_run(args.run, args.split, verbose=not args.quiet)
        if args.json:
            print(json.dumps(metrics, indent=2, ensure_ascii=False))
            return 0
        print(format_metrics_table(metrics, title=f"Retrieval on the {args.split} split of {args.run}"))
        if metrics.get("per_category"):
            print()
            print(format_category_table(metrics, title="Per category"))
        if not args.quiet:
            print(f"wrote eval-{args.split}.json and eval-{args.split}.md in {args.run}", file=sys.stderr)
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
