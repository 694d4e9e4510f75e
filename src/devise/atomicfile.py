"""Writing a file so that readers see the old version or the new one, never half of one.

One helper for every file devise produces (run directories, checkpoints,
caches, indexes): the data goes to a temporary file beside the target, which
replaces the target in a single :func:`os.replace` only once it is complete.
A crash, ``kill -9`` or Ctrl-C leaves the previous file (or none); the
temporary file is removed when writing raises.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator

from devise.errors import DeviseError


def temporary_path(path: str | os.PathLike) -> str:
    """A fresh temporary name beside ``path`` with the same extension (Keras looks at it).

    Unique per call, so two threads or processes writing the same file never
    share one; the file is not created here, so the writer creates it with
    the usual permissions (``mkstemp`` would make it private).
    """
    folder, name = os.path.split(os.fspath(path))
    root, ext = os.path.splitext(name)
    return os.path.join(folder, f"{root}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}{ext}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    Args:
        path: the file to (re)write.
        durable: also flush the file and its folder to disk (``fsync``)
            before and after the rename, so the new version survives a
            power loss, not only a crash of this process. Costs a disk
            flush: meant for checkpoints, not for every small file.

    Yields:
        The temporary path. The caller writes the whole file there (with
        any library: h5py, Keras, ``open``) and returns; if the block
        raises, the temporary file is deleted and ``path`` is untouched.
    """
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(data)


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder ``new`` at ``target``, replacing any folder there.

    A folder cannot be renamed over a non-empty one, so the old one is moved
    aside first (one rename), the new one moved in (another), and the old
    one deleted only then; if the second rename fails, the old one is put
    back. A crash between the two leaves the old folder beside ``target``
    under a temporary name, never a half-written ``target``.
    """
    new, target = os.fspath(new), os.fspath(target)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    old = temporary_path(target)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_directory_writable(path: str | os.PathLike, setting: str = "output_dir") -> None:
    """Refuse a folder that cannot be made or written, before any slow work (nothing is created).

    Missing folders are fine: the nearest existing one must be a folder this
    user can write into.

    Args:
        path: the folder a run will write into (or under).
        setting: what the user set it with, named in the message (``output_dir``, ``--run-dir``).

    Raises:
        DeviseError: a parent of ``path`` is a regular file, or the nearest
            existing folder is not writable; the message names it.
    """
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)

    def refuse(what: str, advice: str) -> DeviseError:
        if existing == path:
            return DeviseError(f"{path}: the {setting} is {what}; {advice}")
        return DeviseError(f"{existing}: {what}, so {setting} {path} cannot be made in it; {advice}")

    if not os.path.isdir(existing):
        raise refuse("not a folder", f"choose another {setting}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise refuse("not writable by this user", f"choose another {setting} or change the folder's permissions")
