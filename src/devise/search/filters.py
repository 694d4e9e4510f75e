"""Search filters: a folder (``under``) and a date range (``since`` / ``until``) as a row mask.

A filter is turned into a ``bool`` mask over the index's rows and passed into
:func:`~devise.search.exact.exact_search`, so rows that fail it are never
candidates and a filtered query gets the true top ``k`` of the matching rows.

Dates are compared with each photo's date as the index stores it
(``ImageIndex.date_ns``): the EXIF date it was taken when its file has one,
otherwise the file's modification time (see :mod:`devise.search.photo_date`,
which reads it at indexing time; reading it at query time would cost a file
read per photo, and reading it only for the top-k candidates would filter
after the cut). An EXIF date without a time zone is local time of the
machine that indexed; a ``since`` / ``until`` without one is local time of
the machine that searches: on one machine the two agree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Sequence

import numpy as np

from devise.errors import QueryError
from devise.search.photo_date import datetime_ns


def parse_date(text: str | dt.date | dt.datetime, *, end: bool = False) -> int:
    """A date or date-time as nanoseconds since the epoch (as ``ImageIndex.date_ns`` stores dates).

    Args:
        text: ``YYYY-MM-DD`` (a local calendar day), an ISO 8601 date-time
            (``2024-01-31T18:30``, with or without a UTC offset; without one
            it is local time), or a ``date`` / ``datetime``.
        end: the bound is an end (``until``): a day then means up to the end
            of that day, so ``until=2024-01-31`` includes all of the 31st.

    Returns:
        The instant in nanoseconds: for ``end`` with a whole day, the first
        instant of the next day, which the caller treats as exclusive.

    Raises:
        QueryError: the text is not a date.
    """
    if isinstance(text, dt.datetime | dt.date):
        day = text
    else:
        value = str(text).strip()
        try:
            day = dt.date.fromisoformat(value) if len(value) == 10 else dt.datetime.fromisoformat(value)
        except ValueError:
            raise QueryError(
                f"not a date: {value[:40]!r} (use YYYY-MM-DD or an ISO date-time such as 2024-01-31T18:30)"
            ) from None
    try:
        if isinstance(day, dt.datetime):
            moment = day
        else:
            moment = dt.datetime.combine(day + dt.timedelta(days=1) if end else day, dt.time())
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time, as a user reads a file's date
        return datetime_ns(moment)
    except (OverflowError, ValueError):  # the first or last day of the calendar, in some time zones
        raise QueryError(f"date out of range: {str(text)[:40]!r} (use a year from 2 to 9998)") from None


def _is_whole_day(text) -> bool:
    return (
        isinstance(text, dt.date)
        and not isinstance(text, dt.datetime)
        or (isinstance(text, str) and len(text.strip()) == 10)
    )


def normalise_folder(folder: str | os.PathLike, image_root: str) -> str:
    """A folder filter as an id prefix: relative to the index root, ``/``-separated.

    An absolute path must lie inside the indexed folder; ``..`` is refused.

    Raises:
        QueryError: the folder is outside the indexed folder or climbs out of it.
    """
    raw = os.fspath(folder)
    text = raw.replace("\\", "/")
    if os.path.isabs(raw) or text.startswith("/"):
        root = os.path.abspath(image_root)
        relative = os.path.relpath(os.path.abspath(raw), root)
        text = relative.replace(os.sep, "/")
        if text == ".." or text.startswith("../"):
            raise QueryError(f"folder {raw[:80]!r} is not inside the indexed folder {root}")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise QueryError(f"folder {raw[:80]!r}: '..' is not allowed; give a folder inside the index")
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class SearchFilter:
    """Which rows a search may return.

    Args:
        under: folders (relative to the indexed folder, or absolute inside
            it); a row matches if it is in any of them (or below). Empty:
            every folder.
        since: earliest photo date, inclusive (see :func:`parse_date`).
        until: latest photo date, inclusive (a whole day counts to its end).
    """

    under: tuple[str, ...] = ()
    since: str | dt.date | None = None
    until: str | dt.date | None = None

    def is_empty(self) -> bool:
        return not self.under and self.since is None and self.until is None

    def mask(self, ids: Sequence[str], date_ns: np.ndarray, image_root: str) -> np.ndarray | None:
        """The ``bool`` row mask, or ``None`` when nothing is filtered.

        Args:
            ids: the rows' ids (paths relative to ``image_root``).
            date_ns: the rows' dates (``ImageIndex.date_ns``), nanoseconds since the epoch.
            image_root: the indexed folder.

        Raises:
            QueryError: a bad folder or date, or ``since`` after ``until``.
        """
        if self.is_empty():
            return None
        keep = np.ones(len(ids), bool)
        if self.under:
            prefixes = sorted({normalise_folder(folder, image_root) for folder in self.under})
            if "" not in prefixes:  # the root itself: every row
                starts = tuple(prefix + "/" for prefix in prefixes)
                keep &= np.fromiter((i.startswith(starts) for i in ids), bool, len(ids))
        low = parse_date(self.since) if self.since is not None else None
        high = parse_date(self.until, end=True) if self.until is not None else None
        if low is not None and high is not None and low >= high + (0 if _is_whole_day(self.until) else 1):
            raise QueryError(f"since ({self.since}) is after until ({self.until})")
        times = np.asarray(date_ns, np.int64)
        if low is not None:
            keep &= times >= low
        if high is not None:
            keep &= times < high if _is_whole_day(self.until) else times <= high
        return keep
