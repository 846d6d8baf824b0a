"""A file's bytes and their version: :func:`hash_file` (the SHA-256 of the bytes and the
:func:`file_version` they were read at), which screening and the review page compare with
the file :func:`xraynet.imaging.decode` opens, so that no row or thumbnail gets the pixels
of other bytes than the ones its hash names. A leaf module: :mod:`xraynet.imaging` and
:mod:`xraynet.decodecache` both use it."""
from __future__ import annotations

import errno
import hashlib
import os
import stat

__all__ = ["file_sha256", "file_version", "hash_file"]

_CHUNK = 1 << 20


def file_version(st: os.stat_result) -> tuple[int, int, int]:
    """What a file's ``stat`` shows of its bytes' version: (inode, size in bytes, mtime in
    ns). A write, a truncation or another file renamed over the name changes it; a chmod,
    a new hard link or an extended attribute (which move only the ctime) do not."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def hash_file(path, chunk_size: int = _CHUNK) -> tuple[str, tuple | None]:
    """(SHA-256 hex digest, :func:`file_version` the bytes were read at) of a file, read in
    ``chunk_size`` pieces; the version is None when the file changed while it was read (the
    digest then belongs to no version of it). Raises ``OSError`` (EINVAL for anything but a
    regular file)."""
    h = hashlib.sha256()
    # O_NONBLOCK: a FIFO swapped in under an image's name must not block the open.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
        version = file_version(os.fstat(fh.fileno()))
    return h.hexdigest(), version if version == file_version(before) else None


def file_sha256(path, chunk_size: int = _CHUNK) -> str:
    """SHA-256 hex digest of a file's bytes, read in ``chunk_size`` pieces (never whole)."""
    return hash_file(path, chunk_size)[0]
