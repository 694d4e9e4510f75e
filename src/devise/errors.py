"""User-facing errors.

Every error a user can cause (a bad config, a missing file, a malformed
line) is raised as a :class:`DeviseError` subclass whose message says what
is wrong, where (file, line, key path) and what to do. The console commands
print these as one line and exit non-zero, never with a traceback.
"""

from __future__ import annotations

#: Longest value :func:`shown` prints.
SHOWN_CHARS = 80


def shown(value) -> str:
    """``repr(value)`` cut to a readable length for an error message (values may be huge or hostile)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str()
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class DeviseError(Exception):
    """Base class of every error devise raises on purpose."""

    exit_code = 1


class ConfigError(DeviseError, ValueError):
    """A config file or override is invalid (unknown key, wrong type, ...)."""

    exit_code = 2


class DataFormatError(DeviseError, ValueError):
    """A data file (captions, word vectors, weights) is malformed."""


class QueryError(DeviseError, ValueError):
    """A search query cannot be embedded: it is empty, or none of its words has a vector.

    Attributes:
        unknown_words: the query's words the model's word table lacks.
    """

    exit_code = 2

    def __init__(self, message: str, unknown_words: list[str] | None = None):
        super().__init__(message)
        self.unknown_words = list(unknown_words or [])


class MissingResourcesError(DeviseError, FileNotFoundError):
    """One or more resources a job needs are absent.

    Args:
        problems: one human-readable message per missing resource, each
            saying where devise looked and how to provide it.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = [f"{len(self.problems)} required resource(s) missing:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class OptionalDependencyError(DeviseError, ImportError):
    """An optional extra is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'devise[{extra}]'"
        )


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise OptionalDependencyError(module.split(".")[0], extra, purpose) from exc
