"""What every console command shares: quiet TensorFlow start-up and clean errors."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user set a level.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless set, and filters the lines it
    does not silence out of the first TensorFlow import
    (:mod:`devise.cli.tensorflow_start`), whenever a command makes it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from devise.cli import tensorflow_start

    tensorflow_start.install()


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``, turning devise errors into one message and an exit code.

    A :class:`~devise.errors.DeviseError` prints ``prog: error: message``
    (no traceback) and returns its ``exit_code``; Ctrl-C returns 130; a
    reader that closed the output pipe (``| head``) returns 141, silently.
    """
    from devise.errors import DeviseError

    try:
        return body()
    except DeviseError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`devise-search ... | head`): stop quietly, as Unix tools do. Python would
        # fail again flushing stdout at exit, so stdout now goes nowhere.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def prefer_onednn() -> None:
    """Turn TensorFlow's oneDNN CPU kernels on, unless the user set ``TF_ENABLE_ONEDNN_OPTS`` either way.

    TensorFlow enables them by itself only on CPUs with AVX-512 VNNI or
    newer; elsewhere (AMD EPYC and Ryzen, older Intel) convolutions run on
    Eigen. On the project's 2-core AMD EPYC machine oneDNN took
    EfficientNet-Lite0's extraction from files from 38 to 67 images/s and
    VGG16's batches from 4.0-4.3 to 5.3-5.6 images/s (docs/extraction.md), while
    VGG16 on one image at a time got slower (4.1 to 2.7 images/s) and
    training did not change. So only the batch extraction commands call
    this, before TensorFlow is imported (TensorFlow reads the variable once,
    when it loads).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def console_entry(main: Callable[[Sequence[str] | None], int], *, onednn: bool = False) -> Callable[[], None]:
    """The console script for ``main``; ``onednn``: call :func:`prefer_onednn` first (batch extraction)."""

    def entry() -> None:
        if onednn:
            prefer_onednn()
        sys.exit(main(sys.argv[1:]))

    entry.onednn = onednn
    return entry


def read_lines(path: str, what: str = "captions") -> list[str]:
    """The non-blank lines of a UTF-8 file (candidate captions, labels), stripped.

    Raises:
        DeviseError: the file is missing, unreadable, not UTF-8 or has no
            line; the message names the file and says what it should hold.
    """
    from devise.errors import DeviseError

    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DeviseError(f"{path}: {what} file not found") from None
    except OSError as exc:  # a folder, no permission, ...
        raise DeviseError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DeviseError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not lines:
        raise DeviseError(f"{path}: no {what} in the file (one per line)")
    return lines
