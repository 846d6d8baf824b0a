"""Write a file so that a reader sees either the old one or the whole new one.

One implementation does it (:func:`_staged`): the content goes to a
temporary file in the target's folder, is ``fsync``-ed, renamed over the
target with ``os.replace``, and the folder is ``fsync``-ed so that the rename
itself survives a power cut. On any error (read-only folder, full disk, I/O
error) the temporary file is removed and the target is untouched; the
``OSError`` propagates for the caller to turn into its own message.

Every durable write in xraynet goes through one of its doors:
:func:`durable_replace` (a descriptor), :func:`atomic_open` (a file object:
charts, heatmaps, JSON and CSV outputs), :func:`write_atomic` (bytes: the
screening report, the review page) and :func:`durable_path` (a path, for
writers that open files by name: h5py model files).
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path

__all__ = ["durable_replace", "durable_path", "atomic_open", "write_atomic", "write_all", "fsync_dir",
           "special_file_kind", "leftover_temps"]

# fsync of a folder is refused by some file systems (and a folder we may not read cannot be opened):
# the rename is still atomic there, only its durability is the file system's business.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES,
                                    errno.EPERM, errno.EISDIR})


def fsync_dir(directory) -> None:
    """``fsync`` a folder so that a rename or a new file in it is on disk. Real I/O errors
    (``EIO``, ``ENOSPC``) raise; a file system that does not support it is skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        if e.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short), or raise."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _create_tmp(path: Path, tmp) -> tuple[int, Path]:
    # Mode 0644 less the umask, as open() would create it (mkstemp's 0600 would hide reports and
    # charts from other users; a umask of 027 is the site's choice to hide them).
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if tmp is not None:
        tmp = Path(tmp)
        return os.open(tmp, flags | os.O_TRUNC, 0o644), tmp
    while True:
        # A hidden name: folder listings (xraynet.discovery) skip it should a kill leave it behind.
        cand = path.with_name(f".{_tmp_stem(path)}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(cand, flags | os.O_EXCL, 0o644), cand
        except FileExistsError:
            continue


# The longest file name (NAME_MAX, 255 bytes on Linux, macOS and Windows file systems) and
# what a temp name adds to the name it stands for: "." before, ".<12 hex>.tmp" after.
_NAME_MAX, _TMP_EXTRA = 255, 18


def _tmp_stem(path: Path) -> str:
    """The part of ``path``'s name a temp name keeps: all of it, or, for a name within 18
    bytes of the longest one allowed, its first bytes (a legal name must never fail to be
    written because its temp name would not be)."""
    raw = os.fsencode(path.name)
    return path.name if len(raw) + _TMP_EXTRA <= _NAME_MAX else os.fsdecode(raw[:_NAME_MAX - _TMP_EXTRA])


def leftover_temps(path) -> list[Path]:
    """The hidden temporary files of ``path`` that a killed writer left beside it (the names
    :func:`_create_tmp` gives: ``.<name>.<12 hex digits>.tmp``), and nothing else. Removing
    them is for the owner of ``path``, at a moment when no writer of it runs."""
    import re

    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(_tmp_stem(path))}\.[0-9a-f]{{12}}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.with_name(n) for n in names if pattern.fullmatch(n))


@contextmanager
def _staged(path, tmp, make_parents: bool):
    """Yield ``(descriptor, path)`` of a new temporary file beside ``path``; on a normal exit
    ``fsync`` it, close it, ``os.replace`` it over ``path`` and ``fsync`` the folder; on any
    error close and remove it and re-raise. The one temp + fsync + replace + folder-fsync."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_p = _create_tmp(path, tmp)
    try:
        try:
            yield fd, tmp_p
            # fsync acts on the file, not on this descriptor: it also flushes what a writer
            # wrote through a descriptor of its own (durable_path).
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_p, path)
    except BaseException:
        try:
            os.unlink(tmp_p)
        except OSError:
            pass  # already gone, or the folder refuses: a named tmp is cleaned by its owner, a random one is hidden
        raise
    fsync_dir(path.parent)


@contextmanager
def durable_replace(path, *, tmp=None, make_parents: bool = False):
    """``with durable_replace(path) as fd: write_all(fd, data)`` -- the one durable write.

    Yields the descriptor of a new temporary file in ``path``'s folder (named
    ``tmp`` when given -- the caller then owns that name and cleans up what a
    kill leaves; else a fresh hidden ``.<name>.<random>.tmp``). When the block
    ends normally: ``fsync``, close, ``os.replace`` over ``path``, ``fsync`` of
    the folder. When anything fails, the block included: the temporary file is
    closed and removed, ``path`` is left as it was, and the error propagates.
    ``make_parents``: create missing parent folders first."""
    with _staged(path, tmp, make_parents) as (fd, _):
        yield fd


@contextmanager
def durable_path(path, *, make_parents: bool = False):
    """``with durable_path(path) as tmp: h5py.File(tmp, "w")...`` -- for writers that need a
    file name. Yields the path of a new, empty hidden temporary file beside ``path``; the
    writer must write into that file in place (open it for writing, as ``h5py.File(tmp, "w")``
    does, never delete and recreate it) and close it before the block ends. Then, as in
    :func:`durable_replace`: ``fsync``, ``os.replace`` over ``path``, ``fsync`` of the folder;
    on any error the temporary file is removed and ``path`` is left as it was."""
    with _staged(path, None, make_parents) as (_, tmp_p):
        yield tmp_p


@contextmanager
def atomic_open(path, mode: str = "wb", *, tmp=None, **kwargs):
    """``with atomic_open(path, "w", newline="") as fh: ...`` -- ``open`` arguments
    apply to the temporary file; the parent folder is created if missing. The
    file gets mode 0644 less the umask, like a file ``open`` creates. See
    :func:`durable_replace`."""
    with durable_replace(path, tmp=tmp, make_parents=True) as fd:
        # closefd=False: the helper syncs and closes the descriptor after the buffer is flushed here.
        with os.fdopen(fd, mode, closefd=False, **kwargs) as fh:
            yield fh


def write_atomic(path, data: bytes, *, tmp=None) -> None:
    """Replace ``path`` durably with ``data`` (see :func:`durable_replace`)."""
    with durable_replace(path, tmp=tmp) as fd:
        write_all(fd, data)


def special_file_kind(path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder ("a FIFO",
    "a character device", ...), else None. Such a path must never be written over: replacing
    it destroys it (as root, ``/dev/null``), and reading it may block or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "something that is not a regular file"
