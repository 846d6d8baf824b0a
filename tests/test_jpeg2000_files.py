"""JPEG 2000 files (JP2 and bare codestreams) through xraynet.decoders.raster.jpeg2000:
every precision, sign and component count at its own depth, the colour space box,
sizes and the end marker checked before decoding, and the reasons of broken files.

Every image is generated here, small, with imagecodecs (OpenJPEG)."""
from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
from helpers import assert_reason

from xraynet.decoders.codestream import jp2_colourspace, siz_components
from xraynet.imaging import decode

imagecodecs = pytest.importorskip("imagecodecs")

LUMA = np.array([0.299, 0.587, 0.114])


def ramp(h=48, w=64, bits=16) -> np.ndarray:
    """Unsigned samples covering 0 .. 2**bits - 1 (both ends included), not symmetric."""
    y, x = np.mgrid[0:h, 0:w]
    v = (x + w * y) / (h * w - 1)
    return np.round(v * ((1 << bits) - 1)).astype(np.uint16 if bits > 8 else np.uint8)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def jp2(path, a, **kw):
    fmt = "j2k" if path.suffix.lower() in (".j2k", ".j2c") else "jp2"
    return write(path, imagecodecs.jpeg2k_encode(a, level=0, codecformat=fmt, **kw))


def with_colourspace(data: bytes, space: int) -> bytes:
    """``data`` (a JP2 file) with its colour specification box's EnumCS set to ``space``."""
    _, pos = jp2_colourspace(data)
    return data[:pos] + struct.pack(">L", space) + data[pos + 4:]


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_colour_and_alpha_keep_their_precision(tmp_path, bits, channels):
    # Pillow gave these as 8-bit RGB(A) / LA, and the brightest samples came out black.
    v = ramp(bits=bits)
    full = np.full_like(v, (1 << bits) - 1)
    stack = {2: [v, full], 3: [v, v // 2, full - v], 4: [v, v // 2, full - v, full]}[channels]
    a = np.stack(stack, -1)
    kw = {"bitspersample": 12} if bits == 12 else {}
    d = decode(jp2(tmp_path / "f.jp2", a, **kw))
    top = (1 << bits) - 1
    want = v / top if channels == 2 else (np.stack(stack[:3], -1) / top) @ LUMA
    assert d.bit_depth == bits and d.source_mode == {2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    np.testing.assert_allclose(d.pixels, want, atol=1e-5)
    assert d.pixels[-1, -1] == pytest.approx(want[-1, -1], abs=1e-5)  # the brightest stays bright
    assert "nearly_uniform" not in d.warnings


@pytest.mark.parametrize("suffix", [".jp2", ".j2k"])
def test_gray_depths(tmp_path, suffix):
    for bits in (8, 12, 16):
        v = ramp(bits=bits)
        kw = {"bitspersample": 12} if bits == 12 else {}
        d = decode(jp2(tmp_path / f"g{bits}{suffix}", v, **kw))
        assert d.bit_depth == bits and d.source_mode == ("L" if bits == 8 else "I;16")
        np.testing.assert_allclose(d.pixels, v / ((1 << bits) - 1), atol=1e-6)
    # 12-bit detector values in a 16-bit codestream: by the stored depth, as 16-bit PNG
    v12 = ramp(bits=12)
    d = decode(jp2(tmp_path / f"g16_12{suffix}", v12.astype(np.uint16)))
    assert d.bit_depth == 12
    np.testing.assert_allclose(d.pixels, v12 / 4095, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_signed_samples_are_stretched_not_offset(tmp_path, channels):
    # Pillow offset signed samples by half the range: a film filling half of [0, 1], "nearly_uniform".
    s = (ramp().astype(np.int32) // 16 - 1024).astype(np.int16)  # -1024 .. 3071
    a = s if channels == 1 else np.stack([s, s, s], -1)
    d = decode(jp2(tmp_path / "s.j2k", a))
    assert siz_components((tmp_path / "s.j2k").read_bytes())[0][:2] == (16, True)
    want = (s - s.min()) / (s.max() - s.min())
    np.testing.assert_allclose(d.pixels, want, atol=1e-5)
    assert "nearly_uniform" not in d.warnings


def test_colour_space_box(tmp_path):
    y = ramp(bits=8)
    a = np.stack([y, np.full_like(y, 40), np.full_like(y, 200)], -1)
    plain = jp2(tmp_path / "rgb.jp2", a).read_bytes()
    assert jp2_colourspace(plain)[0] == 16
    ycc = decode(write(tmp_path / "sycc.jp2", with_colourspace(plain, 18)))
    assert ycc.source_mode == "YCbCr"
    np.testing.assert_allclose(ycc.pixels, y / 255, atol=1e-6)  # the first component: the luma
    assert_reason(write(tmp_path / "cmyk.jp2", with_colourspace(plain, 12)), "unsupported_mode")


def test_sizes_checked_before_decoding(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise AssertionError("pixels were decoded before the declared size was checked")

    raw = bytearray(jp2(tmp_path / "f.jp2", ramp(bits=8)).read_bytes())
    siz = raw.index(b"\xff\x4f\xff\x51")
    raw[siz + 8:siz + 16] = struct.pack(">II", 13000, 13000)  # Xsiz, Ysiz: 169 M pixels
    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", explode)
    e = assert_reason(write(tmp_path / "bomb.jp2", bytes(raw)), "too_large")
    assert "SIZ" in str(e)
    raw = bytearray(jp2(tmp_path / "g.j2k", ramp(bits=8)).read_bytes())
    raw[8:16] = struct.pack(">II", 13000, 13000)
    assert_reason(write(tmp_path / "bomb.j2k", bytes(raw)), "too_large")


@pytest.mark.parametrize("suffix", [".jp2", ".j2k"])
def test_cut_files_are_truncated_and_damaged_ones_damaged(tmp_path, suffix):
    rng = np.random.default_rng(0)
    data = jp2(tmp_path / f"f{suffix}", (rng.random((64, 80)) * 65535).astype(np.uint16)).read_bytes()
    for k, part in enumerate((0.3, 0.6, 0.95)):
        cut = data[:int(len(data) * part)]
        assert_reason(write(tmp_path / f"cut{k}{suffix}", cut), "truncated")
        # an interrupted copy padded with zeros to the full length
        assert_reason(write(tmp_path / f"pad{k}{suffix}", cut + bytes(len(data) - len(cut))), "truncated")
    start = data.index(b"\xff\x4f\xff\x51")
    garbled = bytearray(data)
    garbled[start + 4:start + 6] = b"\x00\x00"  # Lsiz 0: a SIZ marker that cannot be
    e = assert_reason(write(tmp_path / f"bad{suffix}", bytes(garbled)), "damaged")
    assert "JPEG 2000" in str(e)


def test_trailing_boxes_after_the_codestream(tmp_path):
    v = ramp(bits=16)
    data = jp2(tmp_path / "f.jp2", v).read_bytes()
    xml = b"<xml>" + b"x" * 4000 + b"</xml>"
    d = decode(write(tmp_path / "xml.jp2", data + struct.pack(">L4s", 8 + len(xml), b"xml ") + xml))
    np.testing.assert_allclose(d.pixels, v / 65535, atol=1e-6)


def test_without_imagecodecs(tmp_path, monkeypatch):
    gray = jp2(tmp_path / "g.jp2", ramp(bits=8))
    rgb16 = jp2(tmp_path / "c.jp2", np.stack([ramp()] * 3, -1))
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # as if it were not installed
    np.testing.assert_allclose(decode(gray).pixels, ramp(bits=8) / 255, atol=1e-6)  # Pillow reads it right
    e = assert_reason(rgb16, "unsupported_codec")
    assert "pip install imagecodecs" in str(e)


def test_decoded_through_jpeg2000_not_pillow(tmp_path, monkeypatch):
    from xraynet.decoders.raster import jpeg2000

    def refuse(*args, **kwargs):
        raise AssertionError("Pillow decoded a JPEG 2000 file imagecodecs reads")

    monkeypatch.setattr(jpeg2000, "decode_pillow", refuse)
    for name in ("a.jp2", "b.j2k", "c.J2C", "named.png"):
        d = decode(jp2(tmp_path / name, ramp(bits=8)))
        assert d.source_format == "jpeg2000"


def _box(kind: bytes, content: bytes) -> bytes:
    return struct.pack(">L4s", 8 + len(content), kind) + content


def _jp2_around(stream: bytes, nc: int, bpc: int, extra: bytes = b"", colr: bytes | None = None, hw=None) -> bytes:
    """A JP2 file (T.800 I.5) around the codestream ``stream``: ihdr with ``nc`` components of
    depth code ``bpc``, a colour box (greyscale, or ``colr``), then ``extra`` header boxes."""
    h, w = hw or struct.unpack_from(">LL", stream, 8)[::-1]  # SIZ: Xsiz, Ysiz (no image offset here)
    ihdr = _box(b"ihdr", struct.pack(">LLHBBBB", h, w, nc, bpc, 7, 0, 0))
    colr = colr if colr is not None else _box(b"colr", struct.pack(">BBBL", 1, 0, 0, 17))
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _box(b"ftyp", b"jp2 \0\0\0\0jp2 ")
            + _box(b"jp2h", ihdr + colr + extra) + _box(b"jp2c", stream))


def test_a_palette_gives_its_own_precision(tmp_path):
    # A tester's 8-bit index with a 16-bit gray palette came out all 1.0, "nearly_uniform".
    index = ramp(bits=8)
    stream = imagecodecs.jpeg2k_encode(index, level=0, codecformat="j2k")
    for bits in (8, 16):
        top = (1 << bits) - 1
        entries = [round((255 - i) * top / 255) for i in range(256)]  # an inverting lookup
        pclr = struct.pack(">HB", 256, 1) + bytes([bits - 1]) + b"".join(v.to_bytes(bits // 8, "big") for v in entries)
        cmap = _box(b"cmap", struct.pack(">HBB", 0, 1, 0))
        d = decode(write(tmp_path / f"p{bits}.jp2", _jp2_around(stream, 1, 7, _box(b"pclr", pclr) + cmap)))
        np.testing.assert_allclose(d.pixels, 1 - index / 255, atol=1e-4)


def test_an_icc_profile_in_inks_is_refused(tmp_path):
    rgb = np.stack([ramp(bits=8)] * 3, -1)
    stream = imagecodecs.jpeg2k_encode(rgb, level=0, codecformat="j2k")
    for space, reason in ((b"CMYK", "unsupported_mode"), (b"RGB ", None)):
        profile = bytes(16) + space + bytes(108)  # an ICC header: the colour space at byte 16 (ICC.1 7.2.6)
        colr = _box(b"colr", struct.pack(">BBB", 2, 0, 0) + profile)
        path = write(tmp_path / f"{space.strip().decode()}.jp2", _jp2_around(stream, 3, 7, colr=colr))
        if reason:
            assert_reason(path, reason)
        else:
            np.testing.assert_allclose(decode(path).pixels, ramp(bits=8) / 255, atol=1e-5)


def test_variants_imagecodecs_does_not_read_are_unsupported_not_damaged(tmp_path):
    gray = bytearray(imagecodecs.jpeg2k_encode(ramp(bits=8), level=0, codecformat="j2k"))
    gray[43:45] = b"\x02\x02"  # XRsiz, YRsiz 2: a sub-sampled component
    rgb = bytearray(imagecodecs.jpeg2k_encode(np.stack([ramp(bits=8)] * 3, -1), level=0, codecformat="j2k"))
    rgb[45] = 15  # the second component 16 bits, the others 8
    for name, data in (("sub.j2k", gray), ("mixed.j2k", rgb)):
        e = assert_reason(write(tmp_path / name, bytes(data)), "unsupported_codec")
        assert "Convert the file" in str(e)


def test_header_box_and_codestream_must_agree(tmp_path):
    stream = imagecodecs.jpeg2k_encode(ramp(bits=8), level=0, codecformat="j2k")
    for name, nc, bpc in (("nc.jp2", 3, 7), ("bpc.jp2", 1, 15)):
        assert_reason(write(tmp_path / name, _jp2_around(stream, nc, bpc)), "damaged")
    assert_reason(write(tmp_path / "size.jp2", _jp2_around(stream, 1, 7, hw=(10, 10))), "damaged")
    assert decode(write(tmp_path / "same.jp2", _jp2_around(stream, 1, 7))).bit_depth == 8


def test_more_than_16_bits_by_their_precision(tmp_path):
    v = (ramp(bits=16).astype(np.uint32) * 2)  # 20-bit samples, none above 2**17: a dark film
    d = decode(write(tmp_path / "g20.j2k", imagecodecs.jpeg2k_encode(v, level=0, codecformat="j2k",
                                                                   bitspersample=20)))
    assert d.bit_depth == 20
    np.testing.assert_allclose(d.pixels, v / (2**20 - 1), atol=1e-6)


def test_tile_parts_tell_a_cut_from_trailing_bytes(tmp_path):
    rng = np.random.default_rng(1)
    stream = imagecodecs.jpeg2k_encode((rng.random((64, 80)) * 65535).astype(np.uint16), level=0,
                                       codecformat="j2k")
    # cut, then closed with an end marker: the tile-part's length still runs past the end
    assert_reason(write(tmp_path / "closed.j2k", stream[:len(stream) // 2] + b"\xff\xd9"), "truncated")
    # whole, then more than a KiB of other bytes: not cut
    d = decode(write(tmp_path / "tail.j2k", stream + rng.integers(1, 255, 4096, dtype=np.uint8).tobytes()))
    assert d.bit_depth == 16
