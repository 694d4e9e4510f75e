"""``devise-serve``: a local web page (and JSON API) for searching an image index.

Usage::

    devise-serve --index pictures.h5                     # http://127.0.0.1:8000/
    devise-serve --index pictures.h5 --run RUN --port 9000
    devise-serve --index pictures.h5 --host 0.0.0.0      # reachable from the network (warned)
    devise-serve --index pictures.h5 --thumbnail-dir ~/.cache/devise/pictures --max-image-pixels 100000000

Needs the ``serve`` extra: ``pip install 'devise[serve]'``.
"""

import argparse
import ipaddress
import sys
from collections.abc import Sequence

from devise.cli.common import console_entry, quiet_tensorflow, read_lines, run_command
from devise.web.thumbnails import DEFAULT_MAX_IMAGE_PIXELS

PROG = "devise-serve"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a search page and a JSON API (/api/search?q=...&k=...) over an image index.",
    )
    parser.add_argument("--index", required=True, help="index file from devise-index")
    parser.add_argument("--run", help="training run directory (default: the run recorded in the index)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-k", type=int, default=100, help="most results a request may ask for (default 100)")
    parser.add_argument(
        "--max-query-chars", type=int, default=500, help="longest query accepted, in characters (default 500)"
    )
    parser.add_argument(
        "--captions", help="candidate captions for the image view, one per line (default: the run's dataset captions)"
    )
    parser.add_argument(
        "--thumbnail-dir",
        metavar="DIR",
        help="where thumbnails are kept, made once per image (default: beside the index, INDEX.thumbs)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="images that decode to more pixels get no thumbnail or captions, bounding the server's memory "
        f"(default {DEFAULT_MAX_IMAGE_PIXELS:,}; JPEGs count at their reduced decode)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients may use in the Host header, besides localhost, 127.0.0.1 and --host "
        "(repeatable; '*' allows any: only behind a proxy that checks it)",
    )
    return parser


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.max_k < 1:
        parser.error("--max-k must be at least 1")
    if args.max_query_chars < 1:
        parser.error("--max-query-chars must be at least 1")
    if args.max_image_pixels < 1:
        parser.error("--max-image-pixels must be at least 1")
    quiet_tensorflow()

    def body() -> int:
        from devise.errors import require

        # Before the (slow) model load, so a missing extra is reported at once.
        require("fastapi", "serve", PROG)
        uvicorn = require("uvicorn", "serve", PROG)
        from devise.search.engine import SearchEngine
        from devise.web.app import LOOPBACK_HOSTS, create_app

        captions = None
        if args.captions:
            captions = read_lines(args.captions, "captions")
        engine = SearchEngine.load(args.run, args.index)
        hosts = [*LOOPBACK_HOSTS, *args.allowed_host]
        if args.host not in ("0.0.0.0", "::", ""):
            hosts.append(args.host)
        app = create_app(
            engine,
            captions=captions,
            max_k=args.max_k,
            max_query_chars=args.max_query_chars,
            thumbnail_dir=args.thumbnail_dir,
            max_image_pixels=args.max_image_pixels,
            allowed_hosts=list(dict.fromkeys(hosts)),
        )
        if not is_loopback(args.host):
            print(
                f"{PROG}: warning: binding to {args.host}: anyone who can reach this machine on port "
                f"{args.port} can search the index and view its images (they must use a name given with "
                "--allowed-host, or the address itself: other Host headers are refused)",
                file=sys.stderr,
            )
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"{PROG}: serving {len(engine.index)} images at http://{shown}:{args.port}/ (Ctrl-C to stop)")
        sys.stdout.flush()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0

    return run_command(PROG, body)


console_main = console_entry(main)

if __name__ == "__main__":
    sys.exit(main())
