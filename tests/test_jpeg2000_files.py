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
