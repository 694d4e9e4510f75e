"""Per-item problems found while a dataset loads.

Real datasets are rarely perfect: a sentence file is missing, an image was
truncated by a download. Readers record each such problem here and keep
loading every good item, so one bad file does not cost a whole run; the
caller decides whether to print, save or fail on what was found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from devise.errors import DataFormatError


@dataclasses.dataclass(frozen=True)
class DataProblem:
    """One problem with one item of a dataset.

    Args:
        path: the file the problem is in (or about).
        line: 1-based line number within ``path``, or ``None`` when the
            problem concerns the whole file.
        reason: what is wrong, in words a user can act on.
    """

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        location = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{location}: {self.reason}"


class DataReport:
    """Collects the problems a dataset reader finds, item by item.

    Args:
        strict: when True the first problem raises
            :class:`~devise.errors.DataFormatError` instead of being recorded,
            for users who would rather fix the data than train on part of it.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.problems: list[DataProblem] = []

    def add(self, path: str, reason: str, line: int | None = None) -> None:
        """Record a problem (or raise it, in strict mode).

        Args:
            path: the file the problem is in.
            reason: what is wrong.
            line: 1-based line number, if the problem is on one line.

        Raises:
            DataFormatError: if ``strict`` is True.
        """
        problem = DataProblem(path=str(path), line=line, reason=reason)
        if self.strict:
            raise DataFormatError(str(problem))
        self.problems.append(problem)

    def __len__(self) -> int:
        return len(self.problems)

    def __bool__(self) -> bool:
        # A report object is always "there"; truthiness by problem count
        # would make `if report:` ambiguous, so keep it always true.
        return True

    def summary(self, max_items: int = 10) -> str:
        """A short human-readable account: the count, then the first items.

        Args:
            max_items: at most this many problems are listed one per line;
                the rest are counted.
        """
        count = len(self.problems)
        if count == 0:
            return "no data problems found"
        noun = "problem" if count == 1 else "problems"
        lines = [f"{count} data {noun} found:"]
        lines += [f"  {problem}" for problem in self.problems[:max_items]]
        if count > max_items:
            lines.append(f"  ... and {count - max_items} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: ``{"count": n, "problems": [...]}``."""
        return {
            "count": len(self.problems),
            "problems": [dataclasses.asdict(problem) for problem in self.problems],
        }
