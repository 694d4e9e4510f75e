"""``devise-beam-extract``: image features (and embeddings) of a large collection in shards, on Apache Beam.

Usage::

    devise-beam-extract --images ~/Pictures --out features/ [--run RUN] [--config CONFIG] [--shards 16] \
        [-- beam pipeline options, e.g. --runner DataflowRunner --project P --region R --temp_location gs://...]

Everything after ``--`` (and any option this command does not know) goes to
Beam's ``PipelineOptions``; with none, the pipeline runs on the direct runner.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, run_command

PROG = "devise-beam-extract"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Extract image features (and, with --run, joint-space embeddings) with an Apache Beam "
        "pipeline into sharded HDF5 files plus manifest.json, which devise-index --features and the Trainer "
        "(image_encoder.features) read. Options not listed here are Beam pipeline options (--runner ...).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (recursive), or a glob pattern (local or gs://...)")
    source.add_argument("--list", dest="file_list", help="text file with one image path per line")
    parser.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    parser.add_argument("--run", help="finished training run: also write its joint-space embeddings")
    parser.add_argument(
        "--config", help="YAML config whose image_encoder section names the backbone (default: the run's)"
    )
    parser.add_argument("--shards", type=int, default=16, help="number of shard files (default 16)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines from the workers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    beam_args = [a for a in beam_args if a != "--"]
    quiet_tensorflow()

    def body() -> int:
        from devise.config import load_config
        from devise.pipelines.beam_extract import list_images, run_extraction

        image_encoder = load_config(args.config).image_encoder if args.config else None
        images = list_images(args.images, args.file_list)
        summary = run_extraction(
            images,
            args.out,
            image_encoder=image_encoder,
            run_dir=args.run,
            num_shards=args.shards,
            pipeline_args=beam_args,
            source=args.images or args.file_list,
            progress=not args.quiet,
        )
        print(summary.summary())
        return 0

    return run_command(PROG, body)


console_main = console_entry(main, onednn=True)

if __name__ == "__main__":
    console_main()
