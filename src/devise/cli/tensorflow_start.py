"""TensorFlow's start-up chatter kept off the console commands' output.

On every run of a machine without a GPU driver, TensorFlow's C++ start-up
writes lines a devise user can do nothing about: absl's notice that its
logging is not set up yet, "Could not find cuda drivers", "oneDNN custom
operations are on" and then a failed ``cuInit`` marked as an error. They
are written before absl's logging starts, so ``TF_CPP_MIN_LOG_LEVEL`` does
not silence them, and TensorFlow has no other switch: hence this module.

:func:`install` puts a finder in front of ``sys.meta_path`` that waits for
the first ``import tensorflow`` of the process, whoever makes it (a command
imports TensorFlow only once its arguments are checked, and ``devise-search``
only when a photo needs the CNN). That one import, and the device listing
that starts the CUDA platform, run with file descriptor 2 sent through a
small filter process that passes every other line at once and drops those.
A process, not a thread, so that a fatal message just before an ``abort()``
(a CPU without AVX, say) still gets out: the filter outlives us and drains
the pipe. Where that cannot be set up (no stderr, no subprocess), the
import runs unfiltered. ``TF_CPP_MIN_LOG_LEVEL=0`` or ``1`` shows everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
from collections.abc import Iterator

#: Said when the machine has no GPU driver.
NO_DRIVER = "Could not find cuda drivers on your machine"
#: Dropped wherever they appear in a line.
CHATTER = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    NO_DRIVER,
    "oneDNN custom operations are on",
)
#: Dropped only after the no-driver line: with a driver present it is a real problem.
NO_DRIVER_CONSEQUENCE = "failed call to cuInit"

_FILTER = f"""
import sys
chatter = {[text.encode() for text in CHATTER]!r}
no_driver_line = {NO_DRIVER.encode()!r}
consequence = {NO_DRIVER_CONSEQUENCE.encode()!r}
no_driver = False
for line in sys.stdin.buffer:
    if no_driver_line in line:
        no_driver = True
    if any(text in line for text in chatter) or (no_driver and consequence in line):
        continue
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""
# Longest wait for the filter to pass the last lines on (a process TensorFlow started may hold the pipe).
_DRAIN_SECONDS = 10


def install() -> None:
    """Filter the first ``import tensorflow`` of this process, unless the user asked for TensorFlow's logs."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _FirstImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FirstImport())


class _FirstImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once: TensorFlow's own imports go the usual way
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None  # let the other finders look (or fail as usual)
        spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its own loader; this one only wraps the first execution.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with filtered_stderr():
            self.loader.exec_module(module)
            with contextlib.suppress(Exception):  # only to start the CUDA platform now, as TensorFlow will later
                module.config.list_physical_devices()


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """File descriptor 2 through the filter process while the block runs (unfiltered if that cannot be set up)."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to filter
        yield
        return
    try:
        # No site or environment: the filter starts in milliseconds and runs nothing of the user's.
        child = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _FILTER], stdin=subprocess.PIPE, stdout=saved, stderr=subprocess.DEVNULL
        )
    except (OSError, ValueError):
        os.close(saved)
        yield
        return
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if sys.stderr is not None:
                sys.stderr.flush()
        os.dup2(saved, 2)  # closes our end of the pipe: the filter drains it and ends
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=_DRAIN_SECONDS)
