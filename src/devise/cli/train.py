"""``devise-train``: train a DeViSE model from a YAML config.

Usage::

    devise-train --config configs/demo.yaml [key.sub=value ...]
    devise-train --config configs/pascal.yaml --check    # validate only
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command

PROG = "devise-train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a DeViSE joint image-text embedding from a YAML config.",
        epilog="Example: devise-train --config configs/demo.yaml trainer.epochs=5 name=quick",
    )
    parser.add_argument("--config", required=True, help="experiment YAML file (see docs/configs.md)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override config keys, e.g. trainer.epochs=5"
    )
    parser.add_argument("--run-dir", help="write the run here instead of <output_dir>/<name>-<timestamp>")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config and check that every resource is present (downloading nothing), then exit",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 bad config or usage)."""
    args = build_parser().parse_intermixed_args(argv)
    quiet_tensorflow()

    def body() -> int:
        from devise.config import load_config
        from devise.training.resources import check_resources

        config = load_config(args.config, args.overrides)
        if args.check:
            check_resources(config)
            print(f"{args.config}: config valid and every resource present")
            return 0
        from devise.training.trainer import Trainer

        Trainer(config, run_dir=args.run_dir, verbose=not args.quiet).run()
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
