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
