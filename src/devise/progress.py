"""A dependency-free progress bar for long jobs (extraction, indexing, downloads).

Why devise has its own instead of a kept library, checked against both:

* Keras' ``keras.utils.Progbar`` (Keras 3.15) writes only to stdout, where
  ``devise-search --json`` and ``devise-index`` print their results, and
  decides to redraw in place with ``\r``, backspaces and ANSI colour codes
  whenever the ``posix`` module is loaded: on every Linux and macOS machine,
  so CI logs and redirected output get one endless line of escape codes.
  Importing it also imports TensorFlow (seconds), which ``devise-download``
  and the index readers otherwise never need. (Training keeps Keras' own bar:
  that is ``model.fit`` talking.)
* tqdm is not one of devise's core dependencies (tensorflow, numpy, pillow,
  h5py, pyyaml), and an optional one would mean a second bar for machines
  without it.

This one writes to stderr, redraws in place only on a terminal, and in logs
prints a plain line at most every ``interval`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Prints ``label [####....] done/total rate ETA`` to a stream.

    Redraws in place on a terminal; elsewhere (CI logs, notebooks that do
    not handle carriage returns) prints a line at most every ``interval``
    seconds and at the end.
    """

    def __init__(self, label: str, *, stream=None, width: int = 28, interval: float = 5.0):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0
        self._finished = False
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, total: int) -> None:
        if self._finished:
            return
        now = time.monotonic()
        final = done >= total
        if not final and not self._tty and now - self._last < self.interval:
            return
        if not final and self._tty and now - self._last < 0.1:
            return
        self._last = now
        elapsed = now - self.start
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {rate:.1f}/s " + (
            f"done in {elapsed:.1f}s" if final else f"ETA {eta:.0f}s"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        if final:
            self._finished = True
