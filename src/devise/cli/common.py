"""What every console command shares: quiet TensorFlow start-up and clean errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user set a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``, turning devise errors into one message and an exit code.

    A :class:`~devise.errors.DeviseError` prints ``prog: error: message``
    (no traceback) and returns its ``exit_code``; Ctrl-C returns 130.
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


def console_entry(main: Callable[[Sequence[str] | None], int]) -> Callable[[], None]:
    def entry() -> None:
        sys.exit(main(sys.argv[1:]))

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
