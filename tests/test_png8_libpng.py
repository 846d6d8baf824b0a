"""8-bit PNG through libpng (``imagecodecs.png_decode``): the same rows as Pillow's path,
bit for bit, for the files whose samples it gives; every other file (metadata Pillow
acts on, APNG, chunks after the image data, interlacing, a libpng warning, sides past
libpng's limit, no imagecodecs) stays on Pillow's path with Pillow's reasons; a file
libpng refuses is ``damaged`` even where Pillow would read it (rows missing, wrong IDAT
checksums, chunks out of order). See ``xraynet.decoders.raster.png``. Every image is
generated here, small, in tmp_path."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from xraynet.decoders.raster import png
from xraynet.errors import ImageError
from xraynet.imaging import decode

imagecodecs = pytest.importorskip("imagecodecs")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _outcome(path):
    """('ok', the Decoded's fields) or ('error', reason, message) of decoding ``path``."""
    try:
        d = decode(path)
    except ImageError as e:
        return ("error", e.reason, str(e))
    return ("ok", {k: (v.tobytes(), v.shape, v.dtype.str) if isinstance(v, np.ndarray) else v
                   for k, v in vars(d).items()})


@pytest.fixture
def libpng_calls(monkeypatch):
    """For each file libpng read in the test, whether its samples became the film."""
    taken = []
    real = png._png8_pixels

    def spy(*args):
        out = real(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(png, "_png8_pixels", spy)
    return taken


def _pillow_only(monkeypatch, path):
    """The outcome with libpng taken away (Pillow decodes every PNG below 16 bits)."""
    with monkeypatch.context() as m:
        m.setattr(png, "codec", lambda name: None)
        return _outcome(path)


@pytest.mark.parametrize("mode,shape", [("L", (37, 53)), ("LA", (40, 31, 2)), ("RGB", (29, 45, 3)),
                                        ("RGBA", (33, 20, 4)), ("L", (1, 1))])
def test_libpng_gives_what_pillow_gives_bit_for_bit(tmp_path, monkeypatch, libpng_calls, mode, shape):
    path = tmp_path / f"{mode}.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    got = _outcome(path)
    assert libpng_calls == [True], "the file did not go through libpng"
    assert got[0] == "ok" and got == _pillow_only(monkeypatch, path)
    assert got[1]["source_mode"] == mode and got[1]["bit_depth"] == 8


def _adam7(img: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8- or 16-bit (uint8 / uint16 ``img``) gray PNG of ``img``, every
    row unfiltered."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    img = img.astype(f">u{img.dtype.itemsize}")  # PNG samples are big-endian
    raw = b"".join(b"".join(b"\0" + row.tobytes() for row in img[y0::dy, x0::dx])
                   for x0, y0, dx, dy in passes if img[y0::dy, x0::dx].size)
    h, w = img.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 8 * img.dtype.itemsize, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _gray_png(img: np.ndarray, before_idat: bytes = b"", after_idat: bytes = b"", trailer: bytes = b"") -> bytes:
    """An 8-bit gray PNG of ``img`` with extra chunk bytes around its one IDAT and after IEND."""
    h, w = img.shape
    raw = b"".join(b"\0" + row.tobytes() for row in img)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + before_idat
            + _chunk(b"IDAT", zlib.compress(raw)) + after_idat + _chunk(b"IEND", b"") + trailer)


def test_what_pillow_would_act_on_stays_on_pillow(tmp_path, monkeypatch, libpng_calls):
    from PIL import PngImagePlugin

    img = np.random.default_rng(2).integers(0, 256, (12, 20), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    Image.fromarray(img).save(tmp_path / "exif.png", exif=exif.tobytes())
    big = exif.tobytes() + bytes(1 << 20)  # past the 1 MiB the layout keeps: still an eXIf chunk
    (tmp_path / "exif_big.png").write_bytes(_gray_png(img, before_idat=_chunk(b"eXIf", big)))
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
                 '"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff='
                 '"http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(img).save(tmp_path / "xmp.png", pnginfo=xmp)
    (tmp_path / "adam7.png").write_bytes(_adam7(img))
    (tmp_path / "gama_after.png").write_bytes(_gray_png(img, after_idat=_chunk(b"gAMA", b"\0\1")))  # short gAMA
    (tmp_path / "apng.png").write_bytes(_gray_png(img, before_idat=_chunk(b"acTL", struct.pack(">II", 1, 0))))
    names = ("exif.png", "exif_big.png", "xmp.png", "adam7.png", "gama_after.png", "apng.png")
    for name in names:
        assert _outcome(tmp_path / name) == _pillow_only(monkeypatch, tmp_path / name), name
    assert libpng_calls == [], "a file Pillow acts on differently went through libpng"
    for name in ("exif.png", "exif_big.png", "xmp.png"):
        assert decode(tmp_path / name).pixels.shape == (20, 12), f"{name}: the orientation was not applied"
    np.testing.assert_array_equal(decode(tmp_path / "adam7.png").pixels, img / np.float32(255))
    assert _outcome(tmp_path / "gama_after.png")[:2] == ("error", "damaged")


def test_a_text_chunk_without_an_orientation_goes_through_libpng(tmp_path, monkeypatch, libpng_calls):
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "portable film")
    path = tmp_path / "text.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (12, 20), dtype=np.uint8)).save(path, pnginfo=text)
    assert _outcome(path) == _pillow_only(monkeypatch, path)
    assert libpng_calls == [True]


def test_bytes_after_iend_are_not_read(tmp_path, monkeypatch):
    img = np.random.default_rng(7).integers(0, 256, (16, 16), dtype=np.uint8)
    path = tmp_path / "tail.png"
    path.write_bytes(_gray_png(img, trailer=bytes(8 << 20)))
    sizes = []
    real = png._read_through_iend

    def spy(*args):
        data = real(*args)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(png, "_read_through_iend", spy)
    np.testing.assert_array_equal(decode(path).pixels, img / np.float32(255))
    assert sizes and max(sizes) < 4096, sizes


def test_a_failing_disk_is_unreadable(tmp_path):
    import errno

    img = np.random.default_rng(8).integers(0, 256, (16, 16), dtype=np.uint8)
    path = tmp_path / "eio.png"
    path.write_bytes(_gray_png(img))

    class FailingFile(io.BytesIO):
        def read(self, n=-1):
            if self.tell() == 0 and (n is None or n < 0 or n > 64):
                raise OSError(errno.EIO, "Input/output error")
            return super().read(n)

    fh = FailingFile(path.read_bytes())
    layout = png._png_layout(path, fh, len(fh.getvalue()))
    with pytest.raises(ImageError) as e:
        png._libpng(path, fh, layout, imagecodecs)
    assert e.value.reason == "unreadable"


def test_sides_past_libpngs_limit_stay_on_pillow(tmp_path, monkeypatch):
    # A valid 1,000,001 x 1 strip: libpng refuses its IHDR by default, Pillow reads it.
    monkeypatch.setattr(png, "check_pixels", lambda *args: None)
    img = np.full((1, 1_000_001), 100, np.uint8)
    path = tmp_path / "strip.png"
    path.write_bytes(_gray_png(img))
    d = decode(path)
    assert d.width == 1_000_001 and d.pixels[0, 0] == np.float32(100) / np.float32(255)


def test_unseen_libpng_warnings_leave_the_file_to_pillow(tmp_path, monkeypatch):
    # An application that quiets the "imagecodecs" logger hides libpng's warnings (here: a
    # pHYs chunk with a wrong CRC, which Pillow refuses): the file must still be Pillow's.
    img = np.random.default_rng(9).integers(0, 256, (16, 16), dtype=np.uint8)
    phys = _chunk(b"pHYs", struct.pack(">IIB", 3780, 3780, 1))
    path = tmp_path / "phys.png"
    path.write_bytes(_gray_png(img, before_idat=phys[:-4] + bytes(4)))
    pillow = _pillow_only(monkeypatch, path)
    import logging

    logger = logging.getLogger("imagecodecs")
    before = logger.level
    logger.setLevel(logging.ERROR)  # setLevel, not the attribute: it clears the loggers' cached levels
    try:
        assert _outcome(path) == pillow
    finally:
        logger.setLevel(before)


def test_an_unreadable_libpng_message_is_replaced():
    assert png._reason(UnicodeDecodeError("utf-8", b"\xf0", 0, 1, "invalid start byte")) == "no readable message"
    assert png._reason(ValueError("")) == "no readable message"
    assert png._reason(ValueError("Not enough image data")) == "Not enough image data"


def test_a_libpng_warning_sends_the_file_to_pillow(tmp_path, monkeypatch, libpng_calls, capfd):
    # An RGB ICC profile on a gray film: libpng warns, Pillow says nothing; the row must not change.
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "icc.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)).save(
        path, icc_profile=profile)
    from xraynet.decoders import library_warnings

    with library_warnings() as caught:
        imagecodecs.png_decode(path.read_bytes())
    if not caught:
        pytest.skip("this libpng build does not warn about an RGB profile on a gray image")
    got = _outcome(path)
    assert libpng_calls == [] and got == _pillow_only(monkeypatch, path)
    assert not any(w.startswith("decoder_warning") for w in got[1]["warnings"])
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("fault", ["filter type 9", "rows missing", "checksum"])
def test_damaged_image_data_is_damaged(tmp_path, monkeypatch, libpng_calls, fault):
    # A complete file (IEND, right chunk CRCs) whose image data is wrong. Pillow refuses a bad
    # filter type, but leaves missing rows black and may never read the zlib checksum:
    # libpng refuses all three, and the file is damaged either way.
    img = np.random.default_rng(4).integers(0, 256, (24, 30), dtype=np.uint8)
    raw = bytearray(b"".join(b"\0" + row.tobytes() for row in img))
    if fault == "filter type 9":
        raw[5 * 31] = 9
    elif fault == "rows missing":
        raw = raw[:10 * 31]
    data = zlib.compress(bytes(raw))
    if fault == "checksum":
        data = data[:-4] + bytes(b ^ 0x5A for b in data[-4:])
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30, 24, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    got = _outcome(path)
    assert got[:2] == ("error", "damaged") and "bad.png" in got[2], got
    assert libpng_calls == [], "libpng accepted damaged data"
    pillow = _pillow_only(monkeypatch, path)
    if pillow[0] == "error":  # Pillow's own reason and message where it refuses the data too
        assert got == pillow
    else:
        assert "libpng" in got[2]


def test_without_imagecodecs_pillow_decodes_the_same(tmp_path, monkeypatch, libpng_calls):
    path = tmp_path / "g.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (9, 14), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    with_libpng = _outcome(path)
    monkeypatch.setattr(png, "codec", lambda name: None)
    assert _outcome(path) == with_libpng
    assert libpng_calls == [True], "the second decode went through libpng without imagecodecs"


def test_a_text_chunk_failing_its_checksum_costs_the_chunk_not_the_film(tmp_path):
    # Pillow refused the whole file ("damaged: ... header cannot be read"); libpng, the reference
    # decoder, drops an ancillary chunk whose CRC fails, with a warning, and reads the film.
    img = (np.arange(40 * 56) % 251).astype(np.uint8).reshape(40, 56)
    text = _chunk(b"tEXt", b"Comment\x00acquired 2026-11-30")
    (tmp_path / "bad.png").write_bytes(_gray_png(img, before_idat=text[:-4] + bytes(4)))
    (tmp_path / "good.png").write_bytes(_gray_png(img, before_idat=text))
    d = decode(tmp_path / "bad.png")
    np.testing.assert_array_equal(d.pixels, img / np.float32(255))
    notes = [w for w in d.warnings if w.startswith("decoder_warning")]  # the film is small: also "tiny"
    assert len(notes) == 1 and notes[0].startswith("decoder_warning (png: ") and "CRC" in notes[0]
    assert decode(tmp_path / "good.png").warnings == d.warnings[1:]


def _with_chunk(data: bytes, chunk: bytes, after_idat: bool) -> bytes:
    """``data`` (a PNG with one IDAT) with ``chunk`` put before its IDAT or after it."""
    at = data.index(b"IDAT") - 4
    if after_idat:
        at += 12 + struct.unpack(">I", data[at:at + 4])[0]
    return data[:at] + chunk + data[at:]


@pytest.mark.parametrize("layout", ["L", "P", "1", "L;4", "LA", "RGB", "L interlaced"])
def test_a_bad_ancillary_crc_costs_the_chunk_in_every_layout(tmp_path, layout):
    img = (np.arange(24 * 40) * 7 % 256).astype(np.uint8).reshape(24, 40)
    if layout == "L interlaced":
        data = _adam7(img)
    else:
        pic = {"P": Image.fromarray(img).convert("P"), "1": Image.fromarray(img).convert("1"),
               "LA": Image.fromarray(np.stack([img, img], -1), "LA"),
               "RGB": Image.fromarray(np.stack([img] * 3, -1))}.get(layout, Image.fromarray(img))
        buf = io.BytesIO()
        pic.save(buf, format="PNG", **({"bits": 4} if layout == "L;4" else {}))
        data = buf.getvalue()
    (tmp_path / "good.png").write_bytes(data)
    text = _chunk(b"tEXt", b"Comment\x00x")
    (tmp_path / "bad.png").write_bytes(_with_chunk(data, text[:-4] + bytes(4), after_idat=False))
    good, bad = decode(tmp_path / "good.png"), decode(tmp_path / "bad.png")
    np.testing.assert_allclose(bad.pixels, good.pixels, atol=1e-6)
    assert any(w.startswith("decoder_warning (png: ") and "CRC" in w for w in bad.warnings)


def test_an_exif_chunk_failing_its_crc_does_not_turn_the_film(tmp_path):
    img = (np.arange(24 * 40) * 7 % 256).astype(np.uint8).reshape(24, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    chunk = _chunk(b"eXIf", exif.tobytes())
    for after_idat in (False, True):
        path = tmp_path / f"e{after_idat}.png"
        path.write_bytes(_with_chunk(_gray_png(img), chunk[:-4] + bytes(4), after_idat))
        assert decode(path).pixels.shape == img.shape, after_idat
        path.write_bytes(_with_chunk(_gray_png(img), chunk, after_idat))
        assert decode(path).pixels.shape == img.shape[::-1], after_idat  # a valid one still turns it


def test_interlaced_16bit_png_has_no_library_note(tmp_path):
    # libpng told imagecodecs how to call it ("Interlace handling should be turned on when using
    # png_read_image"): nothing about the file, so nothing in its row.
    img = (np.arange(37 * 53) * 21 % 65536).astype(np.uint16).reshape(37, 53)
    (tmp_path / "i.png").write_bytes(_adam7(img))
    d = decode(tmp_path / "i.png")
    assert not [w for w in d.warnings if w.startswith("decoder_warning")] and d.bit_depth == 16
    np.testing.assert_allclose(d.pixels, img / 65535, atol=1e-7)
