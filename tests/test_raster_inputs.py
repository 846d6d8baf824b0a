"""xraynet.decoders.raster on the raster files archives really hold: TIFF
WhiteIsZero at every bit depth, 12-bit / lossless / JPEG-LS JPEG, TIFF
compressions Pillow lacks, 16-bit PNG at full precision and stored bit depth,
sizes checked before decoding, truncated vs damaged, missing decoders, memory.

Every image is generated here, small, in tmp_path (plus the shared field files
in ../shared/data/bad when present)."""
from __future__ import annotations

import io
import logging
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_reason
from PIL import Image, ImageOps

from xraynet import decoders
from xraynet.decoders import library_warnings, luma, minmax, raster
from xraynet.errors import ImageError
from xraynet.imaging import decode

imagecodecs = pytest.importorskip("imagecodecs")
tifffile = pytest.importorskip("tifffile")

BAD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bad"
LUMA = np.array([0.299, 0.587, 0.114])


# ------------------------------------------------------------------ helpers
def film(h=120, w=150) -> np.ndarray:
    """A smooth, film-like float64 image in [0.05, 0.95] with detail at several scales."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.5 + 0.3 * np.sin(5 * x) * np.cos(3 * y) + 0.1 * np.sin(40 * x * y)
    return np.clip(img, 0.05, 0.95)


def corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def tiff(path: Path, data, **kw) -> Path:
    tifffile.imwrite(path, data, **kw)
    return path




def without(monkeypatch, *modules):
    """Make ``import <module>`` fail, as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_sbit(png: bytes, sbit: bytes) -> bytes:
    """``png`` with an sBIT chunk after IHDR (8 + 25 bytes)."""
    return png[:33] + png_chunk(b"sBIT", sbit) + png[33:]


def with_exif(jpeg: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# ------------------------------------------------------- 1. TIFF polarity
def _polarity_cases():
    f = film()
    u16 = np.round(f * 65535).astype(np.uint16)
    u12 = np.round(f * 4095).astype(np.uint16)
    return {
        # name: (MinIsBlack samples, the same film stored WhiteIsZero, tifffile options)
        "1-bit": (f > 0.5, ~(f > 0.5), {}),
        "8-bit": (np.round(f * 255).astype(np.uint8), 255 - np.round(f * 255).astype(np.uint8), {}),
        "12-bit packed": (u12, 4095 - u12, {"bitspersample": 12}),
        "16-bit": (u16, 65535 - u16, {}),
        "16-bit holding 12-bit": (u12, 4095 - u12, {}),
        "16-bit deflate": (u16, 65535 - u16, {"compression": "zlib"}),
        "16-bit LZW": (u16, 65535 - u16, {"compression": "lzw"}),
        "int32": ((f * 1e6).astype(np.int32), (3e6 - f * 1e6).astype(np.int32), {}),
        "uint32": ((f * 1e8).astype(np.uint32), (4e9 - f * 1e8).astype(np.uint32), {}),
        "float32": (f.astype(np.float32), (1 - f).astype(np.float32), {}),
        "float64": (f, 1 - f, {}),
        "float32 outside [0, 1]": ((f * 900 - 50).astype(np.float32), (2000 - f * 900).astype(np.float32), {}),
    }


@pytest.mark.parametrize("case", list(_polarity_cases()))
def test_tiff_whiteiszero_inverted_at_every_depth(tmp_path, case):
    plain, white_is_zero, kw = _polarity_cases()[case]
    a = decode(tiff(tmp_path / "black.tif", plain, photometric="minisblack", **kw))
    b = decode(tiff(tmp_path / "white.tif", white_is_zero, photometric="miniswhite", **kw))
    assert corr(a.pixels, b.pixels) > 0.9999, f"{case}: WhiteIsZero decoded as a negative"
    np.testing.assert_allclose(b.pixels, a.pixels, atol=2e-6, err_msg=case)
    assert corr(a.pixels, plain.astype(float)) > 0.9999, case  # and both are the film, not its negative
    assert (a.bit_depth, a.source_mode) == (b.bit_depth, b.source_mode)


@pytest.mark.parametrize("case", ["1-bit", "8-bit", "16-bit", "float32"])
def test_tiff_whiteiszero_through_pillow_fallback(tmp_path, monkeypatch, case):
    plain, white_is_zero, kw = _polarity_cases()[case]
    black = tiff(tmp_path / "black.tif", plain, photometric="minisblack", **kw)
    white = tiff(tmp_path / "white.tif", white_is_zero, photometric="miniswhite", **kw)
    reference = decode(black).pixels
    without(monkeypatch, "tifffile")  # Pillow reads the file instead
    np.testing.assert_allclose(decode(white).pixels, reference, atol=2e-6, err_msg=case)
    assert corr(decode(black).pixels, reference) > 0.9999


def test_tiff_bit_depths_and_modes(tmp_path):
    f = film()
    cases = [
        (np.round(f * 65535).astype(np.uint16), {}, "I;16", 16, 65535),
        (np.round(f * 4095).astype(np.uint16), {}, "I;16", 12, 4095),  # stored bit depth
        (np.round(f * 1023).astype(np.uint16), {}, "I;16", 10, 1023),
        (np.round(f * 4095).astype(np.uint16), {"bitspersample": 12}, "I;16", 12, 4095),
        (np.round(f * 15).astype(np.uint8), {"bitspersample": 4}, "L", 4, 15),
    ]
    for i, (a, kw, mode, depth, full) in enumerate(cases):
        d = decode(tiff(tmp_path / f"{i}.tif", a, **kw))
        assert (d.source_format, d.source_mode, d.bit_depth) == ("tiff", mode, depth), (i, kw)
        np.testing.assert_allclose(d.pixels, a / full, atol=1e-6)
    f64 = decode(tiff(tmp_path / "f64.tif", f))
    assert (f64.source_mode, f64.bit_depth) == ("F;64", 64)
    np.testing.assert_allclose(f64.pixels, f, atol=1e-7)


def test_tiff_colour_layouts(tmp_path):
    f = film()
    rgb16 = np.stack([f, 1 - f, f * 0.5], -1)
    stored = np.round(rgb16 * 65535).astype(np.uint16)
    want = stored.astype(float) @ LUMA / 65535
    planar = decode(tiff(tmp_path / "planar.tif", np.moveaxis(stored, -1, 0), photometric="rgb",
                         planarconfig="separate"))
    contig = decode(tiff(tmp_path / "contig.tif", stored, photometric="rgb"))
    for d in (planar, contig):
        assert (d.source_mode, d.bit_depth) == ("RGB", 16)
        np.testing.assert_allclose(d.pixels, want, atol=2e-6)
    rgb8 = np.round(rgb16 * 255).astype(np.uint8)
    for mode in ("P", "CMYK"):
        path = tmp_path / f"{mode}.tif"
        Image.fromarray(rgb8).convert(mode).save(path)
        d = decode(path)
        assert d.source_mode == mode
        pil = np.asarray(Image.open(path).convert("RGB")).astype(float) @ LUMA / 255
        np.testing.assert_allclose(d.pixels, pil, atol=1e-5)


def test_tiff_multipage_tiled_and_orientation(tmp_path):
    f = np.round(film() * 255).astype(np.uint8)
    d = decode(tiff(tmp_path / "multi.tif", np.stack([f, 255 - f, f // 2]), photometric="minisblack"))
    np.testing.assert_allclose(d.pixels, f / 255, atol=1e-7)  # first page
    d = decode(tiff(tmp_path / "tiled.tif", f, tile=(32, 48), compression="zlib"))
    np.testing.assert_allclose(d.pixels, f / 255, atol=1e-7)
    for orientation in range(1, 9):
        path = tiff(tmp_path / f"o{orientation}.tif", f, extratags=[(274, 3, 1, orientation, True)])
        # Reference: Pillow's transposition of the same pixels in memory (Pillow 13
        # mis-transposes TIFF files themselves for orientations 5-8).
        img = Image.fromarray(f)
        img.getexif()[0x0112] = orientation
        upright = np.asarray(ImageOps.exif_transpose(img))
        np.testing.assert_allclose(decode(path).pixels, upright / 255, atol=1e-7, err_msg=str(orientation))


def test_tiff_jpeg2000_and_other_compressions(tmp_path):
    a = np.round(film() * 4095).astype(np.uint16)
    a8 = (a >> 4).astype(np.uint8)
    for compression, data, full, atol in [("jpeg2000", a, 4095, 1e-6), ("lzw", a, 4095, 1e-6),
                                          ("zstd", a, 4095, 1e-6), ("lzma", a, 4095, 1e-6),
                                          ("packbits", a8, 255, 1e-6), ("jpeg", a8, 255, 0.03)]:
        d = decode(tiff(tmp_path / f"{compression}.tif", data, compression=compression))
        assert d.source_format == "tiff"
        np.testing.assert_allclose(d.pixels, data / full, atol=atol, err_msg=compression)


def test_tiff_without_imagecodecs(tmp_path, monkeypatch):
    a = np.round(film() * 4095).astype(np.uint16)
    j2k = tiff(tmp_path / "j2k.tif", a, compression="jpeg2000")
    lzw = tiff(tmp_path / "lzw.tif", (a >> 4).astype(np.uint8), compression="lzw")
    f64 = tiff(tmp_path / "f64.tif", film())
    without(monkeypatch, "imagecodecs")
    e = assert_reason(j2k, "unsupported_codec")
    assert "pip install imagecodecs" in str(e) and "JPEG2000" in str(e)
    # LZW is one Pillow (libtiff) reads too.
    np.testing.assert_allclose(decode(lzw).pixels, (a >> 4) / 255, atol=1e-7)
    without(monkeypatch, "tifffile")
    e = assert_reason(f64, "unsupported_codec")  # Pillow has no 64-bit float TIFF
    assert "pip install tifffile" in str(e)


def test_tiff_unsupported_photometric(tmp_path):
    lab = tiff(tmp_path / "lab.tif", np.zeros((40, 50, 3), np.uint8), photometric="cielab")
    assert "'LAB'" in str(assert_reason(lab, "unsupported_mode"))


# -------------------------------------------------- 2. JPEG variants
def _jpeg_cases():
    f = film()
    a12 = np.round(f * 4095).astype(np.uint16)
    a16 = np.round(f * 65535).astype(np.uint16)
    a8 = np.round(f * 255).astype(np.uint8)
    return {
        # name: (encoded, samples, precision, exact, frame marker)
        "12-bit extended": (imagecodecs.jpeg8_encode(a12, level=95, bitspersample=12), a12, 12, False, b"\xff\xc1"),
        "12-bit lossless": (imagecodecs.jpeg8_encode(a12, lossless=True, bitspersample=12), a12, 12, True,
                            b"\xff\xc3"),
        "16-bit lossless": (imagecodecs.jpeg8_encode(a16, lossless=True, bitspersample=16), a16, 16, True,
                            b"\xff\xc3"),
        "8-bit lossless": (imagecodecs.jpeg8_encode(a8, lossless=True), a8, 8, True, b"\xff\xc3"),
        "12-bit JPEG-LS": (imagecodecs.jpegls_encode(a12), a12, 12, True, b"\xff\xf7"),
        "8-bit JPEG-LS": (imagecodecs.jpegls_encode(a8), a8, 8, True, b"\xff\xf7"),
    }


@pytest.mark.parametrize("case", list(_jpeg_cases()))
@pytest.mark.parametrize("decoder", ["imagecodecs", "libjpeg"])
def test_jpeg_variants_full_precision(tmp_path, monkeypatch, case, decoder):
    data, a, precision, exact, marker = _jpeg_cases()[case]
    assert marker in data[:200], f"{case}: the encoder did not write the expected frame type"
    path = write(tmp_path / "x.jpg", data)
    if decoder == "libjpeg":
        pytest.importorskip("libjpeg")
        without(monkeypatch, "imagecodecs")
    d = decode(path)
    full = (1 << precision) - 1
    assert (d.source_format, d.bit_depth) == ("jpeg", precision)
    assert d.source_mode == ("L" if precision == 8 else "I;16")
    if exact:
        np.testing.assert_allclose(d.pixels, a / full, atol=1e-7, err_msg=case)
    else:
        np.testing.assert_allclose(d.pixels, a / full, atol=0.01, err_msg=case)
        assert len(np.unique(d.pixels)) > 256  # more levels than 8 bits hold
    assert "nearly_uniform" not in d.warnings


def test_jpeg_12bit_colour_and_orientation(tmp_path):
    f = film()
    rgb = np.round(np.stack([f, f * 0.8, 1 - f], -1) * 4095).astype(np.uint16)
    data = imagecodecs.jpeg8_encode(rgb, level=95, bitspersample=12)
    d = decode(write(tmp_path / "c.jpg", data))
    assert (d.source_mode, d.bit_depth) == ("RGB", 12)
    np.testing.assert_allclose(d.pixels, rgb @ LUMA / 4095, atol=0.01)
    gray = np.round(f * 4095).astype(np.uint16)
    flat = decode(write(tmp_path / "g.jpg", imagecodecs.jpeg8_encode(gray, level=95, bitspersample=12))).pixels
    rotated = decode(write(tmp_path / "r.jpg", with_exif(imagecodecs.jpeg8_encode(gray, level=95,
                                                                                  bitspersample=12), 6)))
    np.testing.assert_array_equal(rotated.pixels, np.rot90(flat, -1))


@pytest.mark.parametrize("case", ["12-bit extended", "12-bit lossless", "12-bit JPEG-LS"])
def test_jpeg_variant_without_decoder_is_unsupported_codec(tmp_path, monkeypatch, case):
    path = write(tmp_path / "x.jpg", _jpeg_cases()[case][0])
    without(monkeypatch, "imagecodecs", "libjpeg")
    e = assert_reason(path, "unsupported_codec")
    assert "pip install imagecodecs" in str(e) and "pylibjpeg-libjpeg" in str(e)


def test_8bit_jpeg_needs_no_codec_package(tmp_path, monkeypatch):
    a = np.round(film() * 255).astype(np.uint8)
    path = tmp_path / "b.jpg"
    Image.fromarray(a).save(path, quality=95)
    without(monkeypatch, "imagecodecs", "libjpeg", "tifffile")
    np.testing.assert_allclose(decode(path).pixels, a / 255, atol=0.03)


def test_orientation_matches_pillow():
    a = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    for orientation in range(1, 9):
        img = Image.fromarray(a)
        img.getexif()[0x0112] = orientation
        np.testing.assert_array_equal(raster.orient(a, orientation), np.asarray(ImageOps.exif_transpose(img)),
                                      err_msg=str(orientation))


# ------------------------------------------ 2b. truncated vs damaged
def _complete_files():
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (160, 160), dtype=np.uint8)
    files = {}
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, fmt)
        files[fmt.lower()] = buf.getvalue()
    files["jpeg12"] = _jpeg_cases()["12-bit extended"][0]
    files["jpegls"] = _jpeg_cases()["12-bit JPEG-LS"][0]
    files["png16"] = imagecodecs.png_encode(np.stack([noise.astype(np.uint16) * 257] * 3, -1))
    for name, kw in [("tiff", {}), ("tiff-lzw", {"compression": "lzw"}), ("tiff-j2k", {"compression": "jpeg2000"})]:
        buf = io.BytesIO()
        tifffile.imwrite(buf, noise.astype(np.uint16) * 16, rowsperstrip=16, **kw)
        files[name] = buf.getvalue()
    return files


@pytest.mark.parametrize("name", ["png", "png16", "jpeg", "jpeg12", "jpegls", "tiff", "tiff-lzw", "tiff-j2k"])
def test_cut_files_are_truncated(tmp_path, name):
    raw = _complete_files()[name]
    for cut in (len(raw) // 2, len(raw) - 3, 20):
        e = assert_reason(write(tmp_path / f"cut{cut}", raw[:cut]), "truncated")
        assert "Copy the file again" in str(e)


@pytest.mark.parametrize("name", ["png", "png16", "jpeg", "jpeg12", "jpegls", "tiff", "tiff-lzw", "tiff-j2k"])
def test_corrupt_middle_is_damaged_or_decodes(tmp_path, name):
    raw = bytearray(_complete_files()[name])
    middle = len(raw) // 2
    raw[middle:middle + 64] = np.random.default_rng(4).integers(0, 256, 64, dtype=np.uint8).tobytes()
    path = write(tmp_path / "corrupt", bytes(raw))
    try:
        decode(path)
    except ImageError as e:
        assert e.reason == "damaged", f"{name}: {e}"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_other_formats_cut_are_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.round(film() * 255).astype(np.uint8)).save(buf, fmt)
    raw = buf.getvalue()
    assert decode(write(tmp_path / "full", raw)).width == 150
    assert_reason(write(tmp_path / "cut", raw[:len(raw) // 2]), "truncated")


def test_png_without_iend_is_truncated(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.round(film() * 255).astype(np.uint8)).save(buf, "PNG")
    assert_reason(write(tmp_path / "x.png", buf.getvalue()[:-12]), "truncated")


# --------------------------------------------- 3. 16-bit PNG precision
def test_png16_gray_alpha_keeps_every_level(tmp_path):
    levels = np.arange(4096, dtype=np.uint16)
    gray = np.random.default_rng(5).permutation(np.tile(levels, 8)).reshape(128, 256)  # all 12-bit levels
    la = np.stack([gray, np.full_like(gray, 65535)], -1)
    d = decode(write(tmp_path / "la.png", imagecodecs.png_encode(la)))
    assert (d.source_mode, d.bit_depth) == ("LA", 12)
    assert len(np.unique(d.pixels)) == 4096
    np.testing.assert_allclose(d.pixels, gray / 4095, atol=1e-7)
    shifted = np.stack([gray << 4, np.full_like(gray, 65535)], -1)  # 12-bit data in the high bits
    d = decode(write(tmp_path / "la_high.png", imagecodecs.png_encode(shifted)))
    assert d.bit_depth == 16 and len(np.unique(d.pixels)) == 4096
    np.testing.assert_allclose(d.pixels, (gray << 4) / 65535, atol=1e-7)


@pytest.mark.parametrize("channels", [3, 4])
def test_png16_rgb_is_full_precision_luma(tmp_path, channels):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 65536, (130, 140, channels), dtype=np.uint16)
    d = decode(write(tmp_path / "c.png", imagecodecs.png_encode(rgb)))
    assert (d.source_mode, d.bit_depth) == (("RGB", "RGBA")[channels - 3], 16)
    np.testing.assert_allclose(d.pixels, rgb[..., :3] @ LUMA / 65535, atol=2e-6)
    assert d.pixels.dtype == np.float32


def test_png16_gray_stored_bit_depth(tmp_path):
    f = film()
    a12 = np.round(f * 4095).astype(np.uint16)
    d = decode(write(tmp_path / "g12.png", imagecodecs.png_encode(a12)))
    assert (d.source_mode, d.bit_depth) == ("I;16", 12)
    np.testing.assert_allclose(d.pixels, a12 / 4095, atol=1e-7)
    assert "nearly_uniform" not in d.warnings and d.pixels.max() > 0.8
    # sBIT declares 12 bits: low-aligned samples as they are, high-aligned ones shifted down.
    for stored in (a12, a12 << 4):
        png = with_sbit(imagecodecs.png_encode(stored), b"\x0c")
        d = decode(write(tmp_path / "sbit.png", png))
        assert d.bit_depth == 12
        np.testing.assert_allclose(d.pixels, a12 / 4095, atol=1e-7)
    # sBIT 16: the writer says all 16 bits count, even if the film is dark.
    d = decode(write(tmp_path / "sbit16.png", with_sbit(imagecodecs.png_encode(a12), b"\x10")))
    assert d.bit_depth == 16
    np.testing.assert_allclose(d.pixels, a12 / 65535, atol=1e-7)
    # Through Pillow (imagecodecs missing) the rule is the same.
    assert raster.stored_bits(3324) == (12, 0) and raster.stored_bits(65535) == (16, 0)
    assert raster.stored_bits(1000) == (10, 0) and raster.stored_bits(16000) == (14, 0)
    assert raster.stored_bits(65520, 12) == (12, 4) and raster.stored_bits(4095, 12) == (12, 0)


def test_png16_without_imagecodecs(tmp_path, monkeypatch):
    a12 = np.round(film() * 4095).astype(np.uint16)
    gray = write(tmp_path / "g.png", imagecodecs.png_encode(a12))
    rgb = write(tmp_path / "c.png", imagecodecs.png_encode(np.stack([a12 * 16] * 3, -1)))
    without(monkeypatch, "imagecodecs")
    d = decode(gray)  # Pillow reads 16-bit gray exactly
    assert d.bit_depth == 12
    np.testing.assert_allclose(d.pixels, a12 / 4095, atol=1e-7)
    d = decode(rgb)  # Pillow reads 16-bit RGB at 8 bits: decoded, and the row says so
    assert any("pip install imagecodecs" in w for w in d.warnings)
    assert corr(d.pixels, a12) > 0.999


# ------------------------------------------- 4. sizes before decoding
def _explode(*args, **kwargs):
    raise AssertionError("pixels were decoded before the declared size was checked")


def test_declared_sizes_checked_before_decoding(tmp_path, monkeypatch):
    f = film(40, 50)  # 2,000 pixels
    a8, a12 = np.round(f * 255).astype(np.uint8), np.round(f * 4095).astype(np.uint16)
    paths = [write(tmp_path / "g16.png", imagecodecs.png_encode(a12)),
             write(tmp_path / "c16.png", imagecodecs.png_encode(np.stack([a12] * 3, -1))),
             write(tmp_path / "j12.jpg", imagecodecs.jpeg8_encode(a12, bitspersample=12)),
             write(tmp_path / "ls.jpg", imagecodecs.jpegls_encode(a12)),
             tiff(tmp_path / "t.tif", a12), tiff(tmp_path / "j2k.tif", a12, compression="jpeg2000")]
    Image.fromarray(a8).save(tmp_path / "g8.png")
    Image.fromarray(a8).save(tmp_path / "g8.jpg")
    paths += [tmp_path / "g8.png", tmp_path / "g8.jpg"]
    for name in ("png_decode", "jpeg8_decode", "jpegls_decode", "ljpeg_decode", "jpeg2k_decode"):
        monkeypatch.setattr(imagecodecs, name, _explode)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", _explode)
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile.ImageFile, "load", _explode)
    libjpeg = sys.modules.get("libjpeg") or pytest.importorskip("libjpeg")
    monkeypatch.setattr(libjpeg, "decode", _explode)
    monkeypatch.setattr(decoders, "MAX_PIXELS", 1999)
    for path in paths:
        e = assert_reason(path, "too_large")
        assert "2,000" in str(e), e


def test_tiff_tile_size_checked(tmp_path, monkeypatch):
    path = tiff(tmp_path / "tiles.tif", np.zeros((32, 32), np.uint8), tile=(512, 512))
    monkeypatch.setattr(decoders, "MAX_PIXELS", 100_000)
    assert "tile" in str(assert_reason(path, "too_large"))


def test_embedded_jpeg2000_bomb_in_tiff(tmp_path):
    raw = bytearray(tiff(tmp_path / "j2k.tif", np.zeros((64, 64), np.uint16), compression="jpeg2000").read_bytes())
    siz = raw.find(b"\xff\x4f\xff\x51")
    assert siz > 0
    raw[siz + 8:siz + 16] = struct.pack(">II", 13000, 13000)  # Xsiz, Ysiz: 169 M pixels
    tracemalloc.start()
    try:
        e = assert_reason(write(tmp_path / "bomb.tif", bytes(raw)), "too_large")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "JPEG 2000" in str(e) and peak < 20e6


def test_jpeg_and_png_header_bombs(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(buf, "JPEG")
    jpeg = bytearray(buf.getvalue())
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 15000, 15000)
    assert "SOF" in str(assert_reason(write(tmp_path / "bomb.jpg", bytes(jpeg)), "too_large"))
    png = bytearray(imagecodecs.png_encode(np.zeros((40, 50), np.uint16)))
    png[16:24] = struct.pack(">II", 12000, 12000)
    assert "IHDR" in str(assert_reason(write(tmp_path / "bomb.png", bytes(png)), "too_large"))


# ------------------------------------------------------------ 5. memory
def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind,limit", [("gray8", 5.5), ("rgb8", 7.6), ("gray16", 7.5), ("rgb16", 11.5)])
def test_decoder_memory_is_a_small_multiple_of_the_image(tmp_path, monkeypatch, kind, limit):
    # The float32 result alone is 4 B/px. tracemalloc sees NumPy's and Python's
    # allocations, not Pillow's own image memory; these PNGs all go through libpng
    # (imagecodecs), whose samples are counted: 1, 3, 2 or 6 B/px, plus the file's
    # bytes while libpng decodes. (Through Pillow the 8-bit ones held 1 or 4 B/px
    # of Pillow's image beside the same 4 B/px result.)
    monkeypatch.setattr(decoders, "BLOCK_ELEMENTS", 1 << 14)  # several blocks even in a small image
    h, w = 700, 900
    g = np.round(film(h, w) * 255).astype(np.uint8)
    path = tmp_path / f"{kind}.png"
    if kind == "gray8":
        Image.fromarray(g).save(path)
    elif kind == "rgb8":
        Image.fromarray(np.stack([g, g, g], -1)).save(path)
    elif kind == "gray16":
        path.write_bytes(imagecodecs.png_encode(g.astype(np.uint16) * 257))
    else:
        path.write_bytes(imagecodecs.png_encode(np.stack([g.astype(np.uint16) * 257] * 3, -1)))

    def run():
        with open(path, "rb") as fh:
            head = fh.read(decoders.HEAD_BYTES)
            return raster.decode_raster(path, fh, head, path.stat().st_size)

    run()  # warm up imports and caches
    peak = _traced_peak(run)
    assert peak / (h * w) < limit, f"{kind}: {peak / (h * w):.1f} bytes per pixel"


def test_minmax_and_luma_work_in_blocks(monkeypatch):
    monkeypatch.setattr(decoders, "BLOCK_ELEMENTS", 1 << 16)
    a = np.random.default_rng(7).integers(-100, 2 ** 30, (1000, 1100)).astype(np.int32)
    peak = _traced_peak(lambda: minmax(a))
    assert peak / a.size < 5.5  # the float32 result and a float64 block; a float64 copy would add 8
    rgb = np.random.default_rng(8).integers(0, 256, (1000, 1100, 3), dtype=np.uint8)
    peak = _traced_peak(lambda: luma(rgb))
    assert peak / (1000 * 1100) < 5.5  # the result and one block; an (h, w, 3) float32 copy would add 12
    np.testing.assert_allclose(luma(rgb[:3, :4]), rgb[:3, :4] @ LUMA, rtol=1e-6)
    x = np.array([[np.nan, 1.0, 3.0], [np.inf, -np.inf, 5.0]])
    np.testing.assert_allclose(minmax(x), [[0, 0, 0.5], [0, 0, 1]])


# --------------------------------------------------- library warnings
def test_tifffile_log_records_land_in_the_row_not_on_stderr(capfd):
    with library_warnings() as caught:
        logging.getLogger("tifffile").warning("TiffPage 0: odd   tag")
    assert caught == [(UserWarning, "TiffPage 0: odd tag")]
    assert capfd.readouterr().err == ""


# ------------------------------------------------ shared field files
BAD_EXPECTED = {
    "truncated_half_jpeg.jpg": ("error", "truncated"),
    "empty_zero_bytes.png": ("error", "empty"),
    "text_file_not_image.jpg": ("error", "not_an_image"),
    "gray16bit_xray.png": ("ok", ("I;16", 16)),
    "rgba_xray.png": ("ok", ("RGBA", 8)),
    "cmyk_xray.jpg": ("ok", ("CMYK", 8)),
    "jpeg_12bit_extended.jpg": ("ok", ("I;16", 12)),
    "gray_alpha_16bit_12bit_data.png": ("ok", ("LA", 16)),
    "gray16_12bit_data.png": ("ok", ("I;16", 12)),
}


def _shared(name) -> Path:
    if not BAD_DIR.is_dir():
        pytest.skip(f"shared broken-file set not found at {BAD_DIR}")
    path = BAD_DIR / name
    if not path.exists():
        pytest.skip(f"{path} missing from the shared set")
    return path


def test_every_non_dicom_shared_file_has_an_expectation():
    if not BAD_DIR.is_dir():
        pytest.skip(f"shared broken-file set not found at {BAD_DIR}")
    present = {p.name for p in BAD_DIR.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")}
    assert present <= set(BAD_EXPECTED), f"no expectation for {sorted(present - set(BAD_EXPECTED))}"


@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_shared_field_files(name):
    path = _shared(name)
    kind, expected = BAD_EXPECTED[name]
    if kind == "error":
        assert_reason(path, expected)
        return
    d = decode(path)
    assert (d.source_mode, d.bit_depth) == expected
    assert d.pixels.std() > 0.1  # a real film, not black or blank
    assert "likely_inverted" not in d.warnings and "nearly_uniform" not in d.warnings


def test_shared_12bit_files_agree_at_full_precision():
    gray12 = decode(_shared("gray16_12bit_data.png"))
    jpeg12 = decode(_shared("jpeg_12bit_extended.jpg"))
    gray_alpha = decode(_shared("gray_alpha_16bit_12bit_data.png"))
    raw = imagecodecs.png_decode(_shared("gray16_12bit_data.png").read_bytes())
    np.testing.assert_allclose(gray12.pixels, raw / 4095, atol=1e-7)  # scaled by the stored 12 bits
    assert corr(jpeg12.pixels, gray12.pixels) > 0.999 and corr(gray_alpha.pixels, gray12.pixels) > 0.999
    np.testing.assert_allclose(jpeg12.pixels, gray12.pixels, atol=0.01)  # 12-bit JPEG: values / 4095
    # Gray + alpha keeps every 16-bit level (Pillow's 8-bit reading merged some).
    ga = imagecodecs.png_decode(_shared("gray_alpha_16bit_12bit_data.png").read_bytes())[..., 0]
    np.testing.assert_allclose(gray_alpha.pixels, ga / 65535, atol=1e-7)
    assert len(np.unique(gray_alpha.pixels)) == len(np.unique(ga))


def test_jpeg_height_zero_is_refused_before_any_decoder_runs(tmp_path):
    # ITU-T T.81 allows height 0 in the SOF when a DNL marker gives it later; a damaged
    # file with height 0 made libjpeg grow its buffers to gigabytes (found by fuzzing).
    buf = io.BytesIO()
    Image.fromarray((np.arange(40 * 48) % 251).astype(np.uint8).reshape(40, 48)).save(buf, "JPEG", quality=80)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = b"\x00\x00"
    (tmp_path / "h0.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageError) as e:
        decode(tmp_path / "h0.jpg")
    assert e.value.reason == "damaged" and "height 0" in str(e.value)
    eoi = data.rindex(b"\xff\xd9")
    (tmp_path / "dnl.jpg").write_bytes(bytes(data[:eoi]) + b"\xff\xdc\x00\x04\x00\x28" + bytes(data[eoi:]))
    with pytest.raises(ImageError) as e:
        decode(tmp_path / "dnl.jpg")
    assert e.value.reason == "unsupported_codec" and "DNL" in str(e.value)


# ------------------------------------------------- found by a second tester
def test_a_tiff_whose_first_page_is_a_thumbnail_gives_the_full_image(tmp_path):
    film = (np.random.default_rng(0).random((256, 256)) * 4095).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "page2.tif") as t:
        t.write((film[::8, ::8] >> 4).astype(np.uint8), subfiletype=1)  # reduced-resolution copy first
        t.write(film)
    with tifffile.TiffWriter(tmp_path / "subifd.tif") as t:
        t.write((film[::8, ::8] >> 4).astype(np.uint8), subfiletype=1, subifds=1)
        t.write(film)  # the full image as the thumbnail's SubIFD
    for name in ("page2.tif", "subifd.tif"):
        d = decode(tmp_path / name)
        assert d.pixels.shape == (256, 256) and d.bit_depth == 12, name
        np.testing.assert_allclose(d.pixels, film / 4095.0, atol=1e-6)


def test_12_bit_films_in_16_bit_rgb_and_white_is_zero_containers_span_the_range(tmp_path):
    film = (np.random.default_rng(1).random((64, 64)) * 4095).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([film] * 3, -1), photometric="rgb")
    tifffile.imwrite(tmp_path / "wiz16.tif", (65535 - film).astype(np.uint16), photometric="miniswhite")
    for name in ("rgb16.tif", "wiz16.tif"):
        d = decode(tmp_path / name)
        assert d.bit_depth == 12 and "nearly_uniform" not in d.warnings, name
        np.testing.assert_allclose(d.pixels, film / 4095.0, atol=2e-3)


def test_libpng_messages_go_into_the_row_not_to_stderr(tmp_path, capfd):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    img = (np.random.default_rng(2).random((32, 32)) * 4095).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in img)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 0, 0, 0, 0))
           + chunk(b"tIME", b"\x07\xe4\x0d\x20\x19\x3c\x3c") + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    (tmp_path / "t.png").write_bytes(png)
    d = decode(tmp_path / "t.png")
    assert any(w.startswith("decoder_warning") and "time" in w for w in d.warnings), d.warnings
    assert capfd.readouterr().err == ""


def test_a_jpeg_tile_without_a_frame_header_in_its_first_mib_is_refused(tmp_path):
    img = (np.random.default_rng(3).random((64, 64)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    pad = b"".join(b"\xff\xe5" + struct.pack(">H", 65535) + bytes(65533) for _ in range(17))
    tile = jpeg[:2] + pad + jpeg[2:]
    tifffile.imwrite(tmp_path / "late.tif", iter([tile]), shape=(64, 64), dtype="uint8", compression="jpeg",
                     tile=(64, 64), photometric="minisblack")
    with pytest.raises(ImageError) as e:
        decode(tmp_path / "late.tif")
    assert e.value.reason == "damaged" and "frame header" in str(e.value)


@pytest.mark.parametrize("kw", [dict(lossless=True), dict(quality=90)], ids=["lossless", "lossy"])
def test_webp_with_a_zero_filled_tail_is_truncated(tmp_path, kw):
    """An interrupted copy padded with zeros to the full size keeps the RIFF length right, and
    libwebp decodes the zeros without an error: lossy data ending in more zeros than a flat
    area explains, or zeros where a chunk header belongs, is truncated. Valid files whose data
    or metadata ends in zeros are not mistaken for one: a film black over its lower 90% at
    quality 100, method 0 (the lossy encoder's longest zero runs), a film black throughout,
    lossless method 0 with a black lower half (zeros without bound: lossless is not checked),
    and Exif padded with zeros."""
    rng = np.random.default_rng(4)
    img = np.clip(film(400, 300) * 255 + rng.normal(0, 8, (400, 300)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "WEBP", **kw)
    data = buf.getvalue()
    padded = write(tmp_path / "padded.webp", data[:len(data) // 2] + bytes(len(data) - len(data) // 2))
    if "lossless" in kw:  # only a zeroed chunk header after the image gives it away
        with_exif = io.BytesIO()
        Image.fromarray(img).save(with_exif, "WEBP", exif=b"Exif\0\0" + bytes(64), **kw)
        whole = with_exif.getvalue()
        padded = write(tmp_path / "padded.webp", whole[:len(whole) - 80] + bytes(80))
    e = assert_reason(padded, "truncated")
    assert "zero bytes" in str(e) and "padded" in str(e)
    assert decode(write(tmp_path / "whole.webp", data)).pixels.shape == (400, 300)

    def webp(a, **options) -> bytes:
        out = io.BytesIO()
        Image.fromarray(a).save(out, "WEBP", **options)
        return out.getvalue()

    mostly_black = img.copy()
    mostly_black[40:] = 0
    half_black = img.copy()
    half_black[200:] = 0
    for name, valid in [("mostly_black", webp(mostly_black, quality=100, method=0)),
                        ("black", webp(np.zeros((1024, 1024), np.uint8), quality=100, method=0)),
                        ("half_black_lossless", webp(half_black, lossless=True, method=0, quality=0)),
                        ("exif_padding", webp(img, exif=b"Exif\0\0" + bytes(2058), **kw))]:
        assert decode(write(tmp_path / f"{name}.webp", valid)).pixels.shape[0] > 0, name
