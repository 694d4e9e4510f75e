"""The date of a photo: when it was taken (its EXIF date) if the file says so, otherwise its modification time.

The index stores one date per photo, which the ``since`` / ``until`` filters
compare (:mod:`devise.search.filters`). A file's modification time changes
when a photo is copied, edited or restored from a backup; the camera's
``DateTimeOriginal`` does not. :func:`photo_date` reads it with Pillow from
the file's header only (``Image.open`` + ``getexif``; no pixel is decoded),
trying, in order, ``DateTimeOriginal`` (36867, in the Exif IFD 0x8769),
``DateTimeDigitized`` (36868) and ``DateTime`` (306, in IFD0). Pillow is
already what devise decodes images with, so no EXIF library is added.

EXIF writes a date as local wall-clock time, ``"YYYY:MM:DD HH:MM:SS"``, with
no time zone. When the matching ``OffsetTime*`` tag (36881, 36882, 36880;
EXIF 2.31) gives one (``"+02:00"``), the date is that instant. Without it,
the date is taken as local time of the machine that indexes, the convention
of photo managers (a camera is set to the time where it is used): a photo
taken at 14:30 then counts as 14:30 for ``--since 2024-06-01T14:00``, and
dates are comparable with modification times, which are instants. Indexing
in another time zone than the camera's shifts such dates by the difference.

A date that is no real date (all zeros or blanks, as cameras without a set
clock write; a 13th month; a year before 1826, the first photograph; more
than a day after the indexing) is ignored, and the next tag, finally the
modification time, is used. So is a file Pillow cannot open: its date is
never a reason to skip a photo (the embedding decides that).

PNG files may carry an ``eXIf`` chunk; it is read only when it comes
before the pixel data (where the PNG specification asks for it): to find
one after them, Pillow's ``getexif`` would decode the whole image (measured:
550 ms for a 3000x3000 PNG, against under 1 ms for its header).
"""

from __future__ import annotations

import datetime as dt
import re
import warnings

from PIL import Image

#: Where a photo's date came from, as the index stores it (its code is the position).
DATE_SOURCES = ("mtime", "exif")

_EXIF_IFD = 0x8769
# (date tag, its time-zone offset tag, whether the date is in the Exif IFD rather than IFD0), in order of preference.
_DATE_TAGS = ((36867, 36881, True), (36868, 36882, True), (306, 36880, False))
_DATE = re.compile(r"(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")
_EARLIEST_YEAR = 1826  # Niepce's view from the window at Le Gras
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 \t\r\n") if value is not None else ""


def parse_exif_date(value, offset=None, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """An EXIF date-time (``"YYYY:MM:DD HH:MM:SS"``) as an aware datetime, or ``None`` if it is no real date.

    Args:
        value: the tag's value (``str`` or ``bytes``, as Pillow returns it);
            a trailing fraction or other text after the seconds is ignored.
        offset: the matching ``OffsetTime*`` value (``"+02:00"``), if any; a
            malformed one is ignored (the date is then local time).
        now: the present, for refusing future dates (default: the clock).

    Returns:
        The instant, or ``None`` for blanks, zeros, impossible fields, years
        before 1826 and dates more than a day in the future.
    """
    match = _DATE.match(_text(value))
    if match is None:
        return None
    try:
        naive = dt.datetime(*map(int, match.groups()))
    except ValueError:  # month 0 or 13, day 31 of a 30-day month, hour 24 ...
        return None
    now = now or dt.datetime.now(dt.UTC)
    if naive.year < _EARLIEST_YEAR or naive.year > now.year + 1:
        return None
    tz = _offset(offset)
    try:
        # astimezone() asks the C library for the local offset: near the ends of the calendar it raises
        # OverflowError, ValueError (year 10000) or OSError depending on the zone; such a date is garbage too.
        moment = naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()
        too_late = moment > now + dt.timedelta(days=1)
    except (OverflowError, ValueError, OSError):
        return None
    return None if too_late else moment


def _offset(value) -> dt.timezone | None:
    match = _OFFSET.fullmatch(_text(value))
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    if delta > dt.timedelta(hours=14) or int(minutes) >= 60:  # no zone is further from UTC
        return None
    return dt.timezone(-delta if sign == "-" else delta)


def exif_date(path: str) -> dt.datetime | None:
    """The date a photo file's EXIF header gives (see the module docstring), or ``None``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the pixels are not decoded here
            with Image.open(path) as img:
                if img.format == "PNG" and "exif" not in img.info:
                    # Pillow's PNG getexif() decodes every pixel to look for an eXIf chunk after them.
                    return None
                ifd0 = img.getexif()
                exif_ifd = ifd0.get_ifd(_EXIF_IFD)
    except Exception:  # Pillow raises many kinds for a file it cannot parse: such a file just has no EXIF date
        return None
    for tag, offset_tag, in_exif_ifd in _DATE_TAGS:
        tags = exif_ifd if in_exif_ifd else ifd0
        moment = parse_exif_date(tags.get(tag), exif_ifd.get(offset_tag))
        if moment is not None:
            return moment
    return None


def photo_date(path: str, mtime_ns: int) -> tuple[int, str]:
    """A photo's date in nanoseconds since the epoch, and where it came from (one of :data:`DATE_SOURCES`).

    Args:
        path: the image file.
        mtime_ns: its modification time, the date when the file has no EXIF date.

    Returns:
        ``(date_ns, "exif")`` or ``(mtime_ns, "mtime")``.
    """
    moment = exif_date(path)
    if moment is None:
        return int(mtime_ns), "mtime"
    return datetime_ns(moment), "exif"


def datetime_ns(moment: dt.datetime) -> int:
    """An aware datetime as nanoseconds since the epoch (to the microsecond), as the index stores dates."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def date_text(date_ns: int) -> str:
    """A stored date as ISO 8601 local time with its offset, to the second (``2024-06-01T14:30:00+02:00``)."""
    moment = _EPOCH + dt.timedelta(microseconds=int(date_ns) // 1000)
    return moment.astimezone().isoformat(timespec="seconds")
