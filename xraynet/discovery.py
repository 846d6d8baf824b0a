"""Which files under a folder are images: the one listing used by screening, training and evaluation.

:func:`find_images` walks a folder and applies these rules, in this order:

* Names starting with ``.`` (hidden files and folders) are skipped.
* Every entry is ``stat``-ed (symlinks followed) before anything opens it.
  Folders are entered (unless ``recursive=False``); a folder reached a second
  time -- a symlink loop, two links to one folder -- is not entered again, so
  directory symlinks are followed once. Real folders come first: symlinked
  ones are entered only after every real folder reachable without them, so a
  link to a folder of the tree (``Archive_link -> patients``) never takes its
  files' paths, whatever the names' order; links to folders outside the tree
  are entered in the order of their paths.
* Only regular files can be images. FIFOs, sockets and devices are never
  opened (opening a FIFO blocks until someone writes to it) and count among
  the other files.
* A regular file is an image when its name ends in one of
  :data:`IMAGE_SUFFIXES` (``.png .jpg .jpeg .jpe .jfif .jls .jp2 .j2k .j2c
  .jpc .jpx .bmp .tif .tiff .gif .webp .dcm .dicom``, any case); any other name -- no extension
  (``IM0001``), a DICOM UID (``1.2.840.113619.2.55.3.604688119.9``), ``.txt``
  -- is an image when :func:`xraynet.imaging.is_dicom_file` says its content
  is DICOM.
* An entry that cannot be ``stat``-ed because it is a broken symlink (target
  missing, or a loop) counts by its name alone: with an image ending it is
  listed, so that decoding reports it (``unreadable``) instead of it
  vanishing quietly. An entry that disappeared between listing its folder and
  ``stat`` is gone and not listed.
* A folder that cannot be listed, or an entry that cannot be ``stat``-ed for
  any other reason (permissions, I/O error), is returned in
  :attr:`Listing.unlisted`; it is never silently dropped. Screening keeps
  its earlier report rows; training and evaluation refuse the folder.

Report paths (:func:`encode_path` / :func:`decode_path`)
--------------------------------------------------------
Linux allows any bytes but ``/`` and NUL in a name, and names need not be
UTF-8. A file's key -- its path relative to the folder, ``/``-separated, the
report's ``path`` column -- is the name's bytes read as UTF-8 where they are
valid, with two escapes: each undecodable byte becomes ``\\xNN`` (two
lower-case hex digits) and a literal backslash becomes ``\\\\``. So the
encoding is reversible and two different names never get the same key
(``caf\\xe9.png`` is the Latin-1 name, ``caf\\\\xe9.png`` the name that holds
the four characters). Keys are plain text (no surrogates) and sort by
:func:`sorted` on the text.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field

from .imaging import is_dicom_file

__all__ = ["find_images", "IMAGE_SUFFIXES", "Listing", "Unlisted", "encode_path", "decode_path",
           "display_path"]

#: File name endings read as images (any case): the one list for screening, training and evaluation.
#: Other files count only when their content is DICOM. The format itself is always told from the
#: content, never from the name (:func:`xraynet.imaging.decode`).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jls", ".jp2", ".j2k", ".j2c", ".jpc", ".jpx",
                            ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})

# A symlink whose target is missing or loops: it counts by its name.
_BROKEN_LINK = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR})


@dataclass(frozen=True)
class Unlisted:
    """A folder that could not be listed, or an entry that could not be ``stat``-ed.
    ``key``: its path relative to the folder as :func:`encode_path` text (``""``: the
    folder itself); ``path``: the path on disk; ``error``: what the OS said."""

    key: str
    path: str
    error: OSError

    @property
    def reason(self) -> str:
        return self.error.strerror or str(self.error)

    @property
    def error_name(self) -> str:
        return errno.errorcode.get(self.error.errno, type(self.error).__name__)


@dataclass
class Listing:
    """What :func:`find_images` found. ``files``: ``(key, path to open)`` sorted by key;
    ``unlisted``: what could not be listed or examined; ``others``: entries seen that are
    not images (other regular files, FIFOs, sockets, devices)."""

    files: list = field(default_factory=list)
    unlisted: list = field(default_factory=list)
    others: int = 0


# ------------------------------------------------------------------ names
_ESCAPE = re.compile(r"[\\\udc80-\udcff]")
_UNESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def _escape(m: re.Match) -> str:
    c = m.group()
    return "\\\\" if c == "\\" else f"\\x{ord(c) - 0xDC00:02x}"


def encode_path(raw) -> str:
    """A file-system path (bytes, or str as ``os.fsdecode`` gives it) as report text: UTF-8,
    ``\\`` -> ``\\\\``, each undecodable byte -> ``\\xNN``. Inverse: :func:`decode_path`."""
    if not isinstance(raw, bytes):
        raw = os.fsencode(raw)
    # surrogateescape maps exactly the bytes that are not valid UTF-8 to U+DC80..U+DCFF (never
    # ASCII, and the strict decoder refuses encoded surrogates), so every such char is one byte.
    return _ESCAPE.sub(_escape, raw.decode("utf-8", "surrogateescape"))


def decode_path(text: str) -> bytes:
    """The bytes of the path that :func:`encode_path` turned into ``text``. Raises
    ValueError for text that no path encodes to (a lone backslash, ``\\x`` of a byte that
    is valid UTF-8 on its own, an upper-case or short escape)."""
    out = bytearray()
    pos = 0
    for m in _UNESCAPE.finditer(text):
        plain = text[pos:m.start()]
        if "\\" in plain:
            raise ValueError(f"{text!r}: not an encoded path. Expected '\\\\' or '\\xNN' after each backslash, "
                             f"got {plain[plain.index(chr(92)):][:4]!r}. Pass a report's path text.")
        out += plain.encode("utf-8")
        esc = m.group(1)
        if esc == "\\":
            out += b"\\"
        else:
            byte = int(esc[1:], 16)
            if byte < 0x80:
                raise ValueError(f"{text!r}: not an encoded path. Expected \\xNN only for bytes 80-ff (an ASCII "
                                 f"byte is written as itself), got {m.group()!r}. Pass a report's path text.")
            out.append(byte)
        pos = m.end()
    rest = text[pos:]
    if "\\" in rest:
        raise ValueError(f"{text!r}: not an encoded path. Expected '\\\\' or '\\xNN' after each backslash, got "
                         f"{rest[rest.index(chr(92)):][:4]!r}. Pass a report's path text.")
    out += rest.encode("utf-8")  # a surrogate in text raises UnicodeEncodeError, a ValueError
    result = bytes(out)
    if encode_path(result) != text:
        # Escaped bytes that together form valid UTF-8 ('\xc3\xa9' for 'é'): encode_path never writes that.
        raise ValueError(f"{text!r}: not an encoded path. Expected the canonical form, got escapes of bytes that "
                         f"are valid UTF-8. Pass the canonical form, {encode_path(result)!r}.")
    return result


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def display_path(path) -> str:
    """``path`` as printable text for messages: :func:`encode_path` (no surrogates to choke a
    console), and control characters written ``\\xNN`` / ``\\uNNNN``, so that a name holding a
    newline or a terminal escape cannot split a one-line message or colour a cron mail. For
    display only: a report's ``path`` column is :func:`encode_path`."""
    text = encode_path(os.fspath(path))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


# ------------------------------------------------------------------ listing
def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_images(folder, *, recursive: bool = True, exclude=()) -> Listing:
    """List the images under ``folder`` by the rules of the module docstring.

    ``exclude``: files never listed, whatever their name (compared by device and
    inode, so a symlink or hard link to them is excluded too; paths that do not
    exist yet are ignored). Never raises for what it finds: problems are in
    :attr:`Listing.unlisted`."""
    root = os.fsdecode(folder)  # str, bytes or Path; names then come back as str (surrogateescape)
    skip = {ident for ident in map(_identity, exclude) if ident is not None}
    out = Listing()
    try:
        st = os.stat(root)
    except OSError as e:
        out.unlisted.append(Unlisted("", root, e))
        return out
    visited = {(st.st_dev, st.st_ino)}
    stack = [(root, "")]
    linked: list = []  # (key, path, identity) of symlinked folders, entered once no real folder is left
    while stack or linked:
        if not stack:
            linked.sort(reverse=True)
            key, path, ident = linked.pop()
            if ident not in visited:  # not reached meanwhile as a real folder, or by another link
                visited.add(ident)
                stack.append((path, key + "/"))
            continue
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.unlisted.append(Unlisted(prefix[:-1], directory, e))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            key = prefix + encode_path(entry.name)
            ident = _examine(entry, key, out, skip)
            if ident is None or not recursive:
                continue
            if _is_link(entry):
                linked.append((key, entry.path, ident))
            elif ident not in visited:  # a folder reached again (a bind mount of one above) is not entered
                visited.add(ident)
                subdirs.append((entry.path, key + "/"))
        stack.extend(reversed(subdirs))
    out.files.sort(key=lambda f: f[0])
    return out


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _examine(entry: os.DirEntry, key: str, out: Listing, skip: set):
    """Count one folder entry into ``out`` (an image, another entry, or unlisted); for a folder,
    return its (device, inode) instead."""
    try:
        st = os.stat(entry.path)  # follows symlinks; no open() before we know it is a regular file
    except OSError as e:
        try:
            is_link = entry.is_symlink()
        except OSError:
            is_link = False
        if e.errno in _BROKEN_LINK and is_link:
            if _has_image_suffix(entry.name):
                out.files.append((key, entry.path))
            else:
                out.others += 1
        elif e.errno != errno.ENOENT:
            out.unlisted.append(Unlisted(key, entry.path, e))
        return None  # (ENOENT, not a link: deleted since its folder was listed)
    if stat.S_ISDIR(st.st_mode):
        return st.st_dev, st.st_ino
    if not stat.S_ISREG(st.st_mode):
        out.others += 1  # FIFO, socket, device: never opened
    elif (st.st_dev, st.st_ino) in skip:
        pass
    elif _has_image_suffix(entry.name) or is_dicom_file(entry.path):
        out.files.append((key, entry.path))
    else:
        out.others += 1
    return None
