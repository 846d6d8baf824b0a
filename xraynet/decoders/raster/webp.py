"""WebP: Pillow decodes it; before that the RIFF length is checked against the file's, and
after it the chunks are walked and a lossy image chunk is checked for a tail of zero bytes.

An interrupted copy that the file system or the copying tool padded with zeros to the full
size keeps the RIFF length right, and libwebp decodes zero bytes in place of its
compressed data (lossy VP8 and lossless VP8L alike) without an error.

* A chunk header of zero bytes is never valid: the padding began before that chunk.
* Lossy (VP8) data ends in a few zero bytes, except after flat areas: libwebp at quality
  100, method 0 ends a film in up to about 2,800 zero bytes per megapixel of black (a
  quarter of the data of a film black throughout, 15% of one black over its lower 90%).
  So a zero tail counts only when it is longer than any flat area explains -- 4,096 bytes
  per megapixel, and an eighth of the image data -- on a film that is not nearly uniform.
  A shorter padding goes unseen.
* Lossless (VP8L) data is not checked: at method 0 a black area ends the data in zeros
  without bound (16 KB of a 512x512 film black over its lower half), so padding cannot be
  told from it.
"""
from __future__ import annotations

import numpy as np

from .. import COPY_AGAIN, image_error
from .pillow import decode_pillow

__all__ = ["WEBP_SIGNATURE", "decode_webp"]

#: The first 12 bytes' fixed parts: "RIFF", then the length, then "WEBP".
WEBP_SIGNATURE = (b"RIFF", b"WEBP")

# An image chunk ending in at least _ZERO_TAIL_PER_MP zero bytes per megapixel (and at least
# _ZERO_TAIL_MIN), and at least 1 / _ZERO_TAIL_PART of the chunk, was cut and padded -- where
# the decoded film is not nearly uniform (standard deviation of at least _FLAT_STD, the
# nearly_uniform warning's bound, in [0, 1] gray).
_ZERO_TAIL_PER_MP = 4096
_ZERO_TAIL_MIN = 1024
_ZERO_TAIL_PART = 8
_FLAT_STD = 0.02


def decode_webp(path, fh, head: bytes, size: int):
    """A WebP file; returns what :func:`~xraynet.decoders.raster.decode_raster` returns.
    "truncated" when the file is shorter than its RIFF header says, when zero bytes stand
    where a chunk header belongs, or when a lossy image chunk ends in a long run of zeros
    that the decoded film does not explain (see the module docstring)."""
    riff_end = int.from_bytes(head[4:8], "little") + 8
    if riff_end > size:
        # The RIFF header gives the file's length; Pillow only says it cannot decode.
        raise image_error(path, "the WebP file ends early (shorter than its RIFF header says)",
                          f"{riff_end:,} bytes", f"{size:,} bytes", COPY_AGAIN, "truncated")
    decoded = decode_pillow(path, fh, head, size)
    zero_chunk, tail = _chunks(fh, riff_end)
    if zero_chunk is not None:
        raise image_error(path, f"the WebP file holds zero bytes from byte {zero_chunk:,} on, where its next "
                                f"chunk belongs (a copy that stopped early and was padded)",
                          "RIFF chunks to the end of the file", f"{size:,} bytes", COPY_AGAIN, "truncated")
    if tail is not None:
        zeros, length = tail
        pixels = decoded[0]
        least = max(_ZERO_TAIL_MIN, length // _ZERO_TAIL_PART, _ZERO_TAIL_PER_MP * pixels.size // 1_000_000)
        if zeros >= least and float(np.std(pixels[::4, ::4])) >= _FLAT_STD:
            raise image_error(path, f"the WebP image data ends in {zeros:,} zero bytes (a copy that stopped early "
                                    f"and was padded)", "compressed image data to the end of its chunk",
                              f"{length:,} bytes of it, the last {zeros:,} zero", COPY_AGAIN, "truncated")
    return decoded


def _chunks(fh, riff_end: int) -> tuple[int | None, tuple[int, int] | None]:
    """Walk the RIFF chunks (WebP container specification): (offset of a chunk header that
    is all zero bytes, or None; (trailing zero bytes, length) of the lossy VP8 chunk's data,
    or None when there is none)."""
    pos, tail = 12, None
    while pos + 8 <= riff_end:
        fh.seek(pos)
        header = fh.read(8)
        kind, length = header[:4], int.from_bytes(header[4:8], "little")
        if header == bytes(8):
            return pos, tail
        if kind == b"VP8 ":
            tail = (_zero_tail(fh, pos + 8, min(length, riff_end - pos - 8)), length)
        pos += 8 + length + (length & 1)
    return None, tail


def _zero_tail(fh, start: int, length: int) -> int:
    """How many zero bytes end the ``length`` bytes at ``start``."""
    zeros, block = 0, 1 << 16
    while zeros < length:
        n = min(block, length - zeros)
        fh.seek(start + length - zeros - n)
        data = fh.read(n)
        kept = len(data.rstrip(b"\0"))
        zeros += len(data) - kept
        if kept:
            break
    return zeros
