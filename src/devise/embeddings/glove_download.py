"""Download the official GloVe zip archives (resumable, verified).

Stanford publishes the vectors as zip files of text files, e.g.
``glove.6B.zip`` holding ``glove.6B.{50,100,200,300}d.txt``.
:func:`download_glove` fetches one with resume and a progress bar and
checks that the result is a readable zip with the expected members before
it is moved into place. :func:`devise.embeddings.glove.load_glove_text`
reads a member straight from the zip (``glove.6B.zip`` with ``dim=300``, or
``glove.6B.zip::glove.6B.300d.txt``), so there is no need to unzip.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import urllib.parse
import zipfile
from collections.abc import Callable, Sequence

from devise.download import download_file, is_complete
from devise.errors import ConfigError, DataFormatError
from devise.progress import ProgressBar

_MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class GloveVariant:
    """One published GloVe archive.

    Attributes:
        name: the variant key (``"6B"``).
        url: where Stanford publishes the zip.
        dims: vector sizes it holds, one text file each.
        member_pattern: the text file name, with ``{dim}`` for the size.
    """

    name: str
    url: str
    dims: tuple[int, ...]
    member_pattern: str

    @property
    def zip_name(self) -> str:
        """File name of the archive (``"glove.6B.zip"``)."""
        return pathlib.PurePosixPath(urllib.parse.urlsplit(self.url).path).name

    def member(self, dim: int) -> str:
        """The text file inside the archive holding ``dim``-d vectors."""
        if dim not in self.dims:
            raise ConfigError(
                f"GloVe {self.name} has no {dim}-d vectors; choose one of {', '.join(map(str, self.dims))}"
            )
        return self.member_pattern.format(dim=dim)

    def members(self) -> tuple[str, ...]:
        return tuple(self.member(dim) for dim in self.dims)


GLOVE_VARIANTS: dict[str, GloveVariant] = {
    "6B": GloveVariant("6B", "https://nlp.stanford.edu/data/glove.6B.zip", (50, 100, 200, 300), "glove.6B.{dim}d.txt"),
    "42B": GloveVariant("42B", "https://nlp.stanford.edu/data/glove.42B.300d.zip", (300,), "glove.42B.{dim}d.txt"),
    "840B": GloveVariant("840B", "https://nlp.stanford.edu/data/glove.840B.300d.zip", (300,), "glove.840B.{dim}d.txt"),
    "twitter.27B": GloveVariant(
        "twitter.27B",
        "https://nlp.stanford.edu/data/glove.twitter.27B.zip",
        (25, 50, 100, 200),
        "glove.twitter.27B.{dim}d.txt",
    ),
}


def glove_variant(name: str) -> GloveVariant:
    """The :class:`GloveVariant` called ``name``, or a ConfigError listing the choices."""
    try:
        return GLOVE_VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown GloVe variant {name!r}; choose one of {', '.join(GLOVE_VARIANTS)}") from None


def check_glove_zip(path: str | os.PathLike, members: Sequence[str]) -> None:
    """Check that ``path`` is a readable zip holding ``members``, without decompressing it all.

    Reads the central directory, checks that every member is listed, is not
    empty, lies inside the file, and that its local header (and the first
    bytes of its data) read back. Fast even for multi-gigabyte archives,
    unlike :meth:`zipfile.ZipFile.testzip`.

    Raises:
        DataFormatError: the file is not such a zip; the message says why.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            missing = [name for name in members if name not in infos]
            if missing:
                listed = ", ".join(sorted(infos)[:10]) or "nothing"
                raise DataFormatError(f"{path}: zip lacks {', '.join(missing)} (it holds: {listed})")
            for name in members:
                info = infos[name]
                if info.file_size == 0:
                    raise DataFormatError(f"{path}: {name} is empty in the zip")
                if info.header_offset + info.compress_size > size:
                    raise DataFormatError(f"{path}: {name} runs past the end of the file (truncated?)")
                with archive.open(info) as member:
                    member.read(1024)
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise DataFormatError(f"{path}: not a valid zip archive ({exc})") from None


def download_glove(
    dest: str | os.PathLike,
    *,
    variant: str = "6B",
    url: str | None = None,
    progress: bool | Callable[[int, int | None], None] = True,
    retries: int = 3,
    timeout: float = 30,
    backoff: float = 0.5,
) -> str:
    """Download a GloVe zip into the folder ``dest`` and return its path.

    The archive is saved as ``dest/<zip name>`` (e.g. ``glove.6B.zip``). An
    archive already there that passes the check is kept without any
    network access; otherwise the download resumes any ``dest/<zip>.part``
    left by an interrupted run. The finished file must be a valid zip with
    every text file of the variant, or it is never moved into place.

    Args:
        dest: the folder to save the archive in (created if needed).
        variant: a key of :data:`GLOVE_VARIANTS`.
        url: download from here instead of Stanford (a mirror).
        progress: ``True`` for a progress bar on stderr, ``False`` for none,
            or ``progress(done_bytes, total_bytes_or_None)``.
        retries: extra attempts after the first.
        timeout: seconds to wait for the connection and each read.
        backoff: seconds before the first retry; doubled after.

    Raises:
        ConfigError: unknown variant.
        DownloadError: ``dest`` cannot be created, the download failed or
            the archive is not valid.
    """
    spec = glove_variant(variant)
    zip_path = pathlib.Path(dest) / spec.zip_name
    members = spec.members()

    def validate(path: str) -> None:
        check_glove_zip(path, members)

    if is_complete(zip_path, validate=validate):
        return str(zip_path)

    if progress is True:
        callback: Callable[[int, int | None], None] | None = _MiBProgress(spec.zip_name)
    elif callable(progress):
        callback = progress
    else:
        callback = None
    download_file(
        url or spec.url,
        zip_path,
        retries=retries,
        timeout=timeout,
        progress=callback,
        validate=validate,
        backoff=backoff,
    )
    return str(zip_path)


class _MiBProgress:
    """Byte progress shown in MiB on a :class:`ProgressBar`."""

    def __init__(self, name: str):
        self.bar = ProgressBar(f"{name} (MiB)", stream=sys.stderr)

    def __call__(self, done: int, total: int | None) -> None:
        if not total:
            return
        total_mib = max(1, math.ceil(total / _MIB))
        done_mib = total_mib if done >= total else min(done // _MIB, total_mib - 1)
        self.bar.update(done_mib, total_mib)


__all__ = ["GLOVE_VARIANTS", "GloveVariant", "check_glove_zip", "download_glove", "glove_variant"]
