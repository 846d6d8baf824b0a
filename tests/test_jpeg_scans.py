"""JPEG streams whose image data stops early (xraynet.decoders.jpegscan).

libjpeg decodes a JPEG cut short and closed with an end-of-image marker
without an error, filling the rest with gray: these tests check that the
scan walker counts every scan's MCUs right (complete streams of every
Huffman DCT and lossless variant pass; for baseline cuts the count agrees
with where libjpeg-turbo's fill starts), that files, DICOM frames and TIFF
strips cut this way become "truncated" rows, and that a cut JPEG-LS stream,
which cannot be walked, is refused where CharLS refuses it.
"""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import assert_reason
from xraynet.decoders import jpegscan
from xraynet.decoders.jpegscan import scan_shortfall
from xraynet.errors import ImageError
from xraynet.imaging import decode

EOI = b"\xff\xd9"


def film(h=250, w=198, seed=0) -> np.ndarray:
    """A textured 8-bit film (enough entropy-coded data for a cut to land anywhere)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 120 + 60 * np.sin(6 * x) * np.cos(4 * y) + 25 * rng.standard_normal((h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def rgb_film(h=250, w=198) -> np.ndarray:
    return np.stack([film(h, w, 0), film(h, w, 1), film(h, w, 2)], -1)


def jpeg(a: np.ndarray, mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(a)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def dicom_file(path, frame: bytes, ts, shape, bits: int):
    """A DX DICOM file whose pixel data is the one encapsulated frame ``frame``."""
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import generate_uid

    ds = Dataset()
    set_pixel_data(ds, np.zeros(shape, np.uint8 if bits <= 8 else np.uint16), "MONOCHROME2", bits)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.Modality = "DX"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_to(path, data: bytes):
    path.write_bytes(data)
    return path


def variants() -> dict:
    gray, rgb = film(), rgb_film()
    return {
        "gray": jpeg(gray, quality=90),
        "gray optimized tables": jpeg(gray, quality=90, optimize=True),
        "gray progressive": jpeg(gray, quality=90, progressive=True),
        "rgb 4:2:0": jpeg(rgb, quality=85),
        "rgb 4:2:2": jpeg(rgb, quality=85, subsampling=1),
        "rgb 4:4:4": jpeg(rgb, quality=85, subsampling=0),
        "rgb progressive": jpeg(rgb, quality=85, progressive=True),
        "gray restart every 7 MCUs": jpeg(gray, restart_marker_blocks=7),
        "rgb restart every 2 MCU rows": jpeg(rgb, restart_marker_rows=2),
        "rgb progressive restart": jpeg(rgb, progressive=True, restart_marker_blocks=3),
        "cmyk": jpeg(rgb, "CMYK"),
        "cmyk progressive": jpeg(rgb, "CMYK", progressive=True),
        "one MCU": jpeg(film(5, 7)),
    }


VARIANTS = variants()


def cut(data: bytes, fraction: float) -> bytes:
    return data[:int(len(data) * fraction)] + EOI


def scan_starts(data: bytes) -> list[int]:
    """Offsets of the SOS markers, from the segment structure (not a byte search)."""
    out, pos = [], 2
    while pos < len(data) and data[pos + 1] != 0xD9:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            out.append(pos)
            pos = jpegscan._END_OF_SCAN.search(data, pos + 2 + length).start()
        else:
            pos += 2 + length
    return out


# ------------------------------------------------------------------ the walker
@pytest.mark.parametrize("name", list(VARIANTS))
def test_complete_streams_pass(name):
    data = VARIANTS[name]
    assert scan_shortfall(data) is None
    assert scan_shortfall(data + b"\0\xff trailing bytes") is None  # anything after EOI is ignored
    # Fill bytes (FF) may precede any marker (T.81 B.1.1.2), after a scan's data too.
    filled = b"".join(data[i:i + 1] if data[i] != 0xFF or i == 0 or data[i + 1] in (0x00, 0xFF) or
                      0xD0 <= data[i + 1] <= 0xD7 else b"\xff" * 5 + data[i:i + 1] for i in range(len(data)))
    assert scan_shortfall(filled) is None


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "one MCU"])
@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.97])
def test_streams_cut_then_closed_are_truncated(name, fraction):
    found = scan_shortfall(cut(VARIANTS[name], fraction))
    assert found is not None and found.reason == "truncated", found
    assert "then the end-of-image marker follows" in found.what


@pytest.mark.parametrize("name", ["gray", "gray optimized tables", "rgb 4:2:0", "rgb 4:4:4",
                                  "gray restart every 7 MCUs", "rgb restart every 2 MCU rows"])
def test_mcu_count_agrees_with_where_libjpeg_fills(name):
    """libjpeg-turbo decodes the MCU in which the data ran out from zero bits and gives every
    later MCU zero coefficients (flat 128 luma): the walker's count of complete MCUs must be
    where that flat run starts, or one before it."""
    data = VARIANTS[name]
    layer = Image.open(io.BytesIO(data)).layer  # (component id, H, V, quantisation table) each
    one = len(layer) == 1  # a single-component scan's MCU is one 8x8 block (T.81 A.2.2)
    mcu_w, mcu_h = (8, 8) if one else (8 * max(c[1] for c in layer), 8 * max(c[2] for c in layer))
    rng = np.random.default_rng(7)
    for fraction in rng.uniform(0.1, 0.95, 6):
        img = Image.open(io.BytesIO(cut(data, fraction)))
        if img.mode == "RGB":
            img.draft("YCbCr", img.size)  # luma only: upsampled chroma blends across MCU edges
        a = np.asarray(img).astype(int)
        a = a[..., 0] if a.ndim == 3 else a
        found = scan_shortfall(cut(data, fraction))
        done = int(found.what.split(" holds ")[1].split(" of ")[0].replace(",", ""))
        wide = -(-a.shape[1] // mcu_w)
        flat = [bool(np.all(a[r * mcu_h:(r + 1) * mcu_h, c * mcu_w:(c + 1) * mcu_w] == 128))
                for r in range(-(-a.shape[0] // mcu_h)) for c in range(wide)]
        first_flat_run = len(flat) - next(i for i, f in enumerate(reversed(flat)) if not f)
        assert first_flat_run in (done, done + 1), (name, fraction, done, first_flat_run)


def test_progressive_stream_ending_between_scans_is_valid():
    """A scan script may stop before full precision (cjpeg -scans; djpeg reads such files without
    a warning), so a stream that ends with EOI right after a whole scan is not refused -- the
    same bytes as a stream cut exactly there. A cut anywhere else is found."""
    data = VARIANTS["rgb progressive"]
    starts = scan_starts(data)
    assert len(starts) >= 6
    tables = data.rindex(b"\xff\xc4", 0, starts[4])  # scan 5's Huffman tables, right before it
    assert scan_shortfall(data[:tables] + EOI) is None  # scans 1-4 whole: a valid, coarser image
    found = scan_shortfall(data[:starts[4]] + EOI)  # scan 5's tables, then no scan 5
    assert found is not None and found.reason == "truncated" and "Huffman tables" in found.what
    found = scan_shortfall(data[:starts[4] - 3] + EOI)  # inside the DHT before scan 5
    assert found is not None and found.reason == "truncated"
    found = scan_shortfall(data[:starts[4] + 40] + EOI)  # inside scan 5
    assert found is not None and found.reason == "truncated"


@pytest.mark.parametrize("back", [1, 2, 3])
def test_eoi_swallowed_by_a_segment_between_scans_is_truncated(back):
    """A cut a byte or two before a DHT's end, closed with FF D9: the marker becomes the table's
    last bytes, the segment looks whole, and the stream ends without EOI after it."""
    data = VARIANTS["gray progressive"]
    sos = scan_starts(data)[3]
    dht = data.rindex(b"\xff\xc4", 0, sos)
    end = dht + 2 + int.from_bytes(data[dht + 2:dht + 4], "big")
    found = scan_shortfall(data[:end - back] + EOI)
    assert found is not None and found.reason == "truncated", found


def test_data_where_a_marker_belongs_is_damaged():
    """Bytes of a scan header deleted: the decoder skips what it cannot parse ("extraneous bytes
    before marker") and the scan after it is lost."""
    data = VARIANTS["gray progressive"]
    sos = scan_starts(data)[2]
    found = scan_shortfall(data[:sos] + data[sos + 6:])
    assert found is not None and found.reason == "damaged", found


def test_sequential_component_never_coded_is_truncated():
    """A non-interleaved sequential JPEG (one scan a component) cut after its first scan."""
    imagecodecs = pytest.importorskip("imagecodecs")
    gray_only = imagecodecs.jpeg8_encode(film(), level=90)
    assert scan_shortfall(gray_only) is None
    # A 3-component frame header whose only scan codes component 1.
    sof = gray_only.index(b"\xff\xc0")
    length = int.from_bytes(gray_only[sof + 2:sof + 4], "big")
    header = gray_only[sof + 4:sof + 2 + length]
    frame3 = header[:5] + b"\x03" + header[6:9] + b"\x02\x11\x00\x03\x11\x00"
    three = gray_only[:sof] + b"\xff\xc0" + (len(frame3) + 2).to_bytes(2, "big") + frame3 + \
        gray_only[sof + 2 + length:]
    found = scan_shortfall(three)
    assert found is not None and found.reason == "truncated" and "never coded" in found.what


def test_missing_restart_marker_and_bad_code_are_damaged():
    data = bytearray(VARIANTS["gray restart every 7 MCUs"])
    rst = data.index(b"\xff\xd3", scan_starts(bytes(data))[0])
    data[rst + 1] = 0x00  # RST3 becomes a stuffed FF data byte
    found = scan_shortfall(bytes(data))
    assert found is not None and found.reason == "damaged" and "restart marker" in found.what

    # The DC table replaced by one with a single 1-bit code ('0'): the first '1' where a DC
    # code belongs is a code the table lacks.
    data = VARIANTS["gray"]
    pos, out = 2, bytearray(data[:2])
    while True:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xC4 and body[0] == 0x00:
            table = b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00"
            rest = body[17 + sum(body[1:17]):]
            body = table + rest
        out += bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body
        if marker == 0xDA:
            out += data[pos + 2 + length:]
            break
        pos += 2 + length
    found = scan_shortfall(bytes(out))
    assert found is not None and found.reason == "damaged" and "Huffman table" in found.what


def test_variants_it_does_not_check_give_none():
    imagecodecs = pytest.importorskip("imagecodecs")
    a = film(40, 30)
    if getattr(getattr(imagecodecs, "JPEGLS", None), "available", False):
        assert scan_shortfall(cut(imagecodecs.jpegls_encode(a), 0.5)) is None
    assert scan_shortfall(b"not a jpeg") is None
    found = scan_shortfall(VARIANTS["gray"][:-2])  # every MCU there, but no EOI
    assert found.reason == "truncated" and "no end-of-image marker" in found.what
    found = scan_shortfall(VARIANTS["gray"][:200])  # cut inside the frame header
    assert found.reason == "truncated" and "before its first scan" in found.what


def test_cut_inside_the_segment_between_two_scans_is_truncated():
    """A cut inside the DHT before a progressive scan, closed with EOI: the EOI is swallowed by
    the segment's declared length, and the stream ends inside it."""
    data = VARIANTS["gray progressive"]
    sos = scan_starts(data)[3]
    dht = data.rindex(b"\xff\xc4", 0, sos)
    found = scan_shortfall(data[:dht + 10] + EOI)
    assert found is not None and found.reason == "truncated" and "0xFFC4" in found.what


def lossless_variants() -> dict:
    imagecodecs = pytest.importorskip("imagecodecs")
    gray = film()
    a12 = gray.astype(np.uint16) * 16
    return {
        "8-bit": imagecodecs.jpeg8_encode(gray, lossless=True),
        "12-bit": imagecodecs.jpeg8_encode(a12, lossless=True, bitspersample=12),
        "16-bit": imagecodecs.jpeg8_encode(a12 * 16 + 7, lossless=True, bitspersample=16),
        "predictor 7": imagecodecs.jpeg8_encode(gray, lossless=True, predictor=7),
        "odd size": imagecodecs.jpeg8_encode(film(33, 51), lossless=True),
        "rgb": imagecodecs.jpeg8_encode(rgb_film(), lossless=True),
    }


def test_lossless_streams_complete_and_cut():
    """SOF3 (T.81 H.1): every sample a Huffman-coded difference, category 16 without extra bits."""
    for name, data in lossless_variants().items():
        assert data[:200].find(b"\xff\xc3") > 0, name
        assert scan_shortfall(data) is None, name
        for fraction in (0.1, 0.5, 0.98):
            found = scan_shortfall(cut(data, fraction))
            assert found is not None and found.reason == "truncated", (name, fraction, found)
    # 16-bit differences of +-32768 are category 16: a frame of alternating 0 / 32768 columns
    a = np.zeros((16, 16), np.uint16)
    a[:, 1::2] = 32768
    imagecodecs = pytest.importorskip("imagecodecs")
    data = imagecodecs.jpeg8_encode(a, lossless=True, bitspersample=16, predictor=1)
    assert scan_shortfall(data) is None
    assert scan_shortfall(cut(data, 0.6)).reason == "truncated"


@pytest.mark.parametrize("decoder", ["imagecodecs", "libjpeg"])
def test_cut_lossless_jpeg_files_are_truncated_whatever_decodes_them(tmp_path, monkeypatch, decoder):
    """libjpeg-turbo fills a cut lossless stream from 2^(P-1), pylibjpeg-libjpeg repeats the
    last sample: both end flat, which is what sends the stream to the walker."""
    variants = lossless_variants()
    if decoder == "libjpeg":
        pytest.importorskip("libjpeg")
        monkeypatch.setitem(sys.modules, "imagecodecs", None)
    for name in ("8-bit", "12-bit"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(cut(variants[name], 0.5))
        assert_reason(path, "truncated")
        path.write_bytes(variants[name])
        decode(path)


def test_cut_jpegls_is_damaged_although_libjpeg_decodes_it(tmp_path):
    """JPEG-LS cannot be walked; CharLS refuses a cut stream, pylibjpeg-libjpeg returns an image.
    The file is refused, and so is a DICOM frame pydicom decoded through pylibjpeg."""
    imagecodecs = pytest.importorskip("imagecodecs")
    if not getattr(getattr(imagecodecs, "JPEGLS", None), "available", False):
        pytest.skip("imagecodecs here has no CharLS")
    a12 = film().astype(np.uint16) * 16
    data = imagecodecs.jpegls_encode(a12)
    short = cut(data, 0.5)
    libjpeg = pytest.importorskip("libjpeg")
    assert libjpeg.decode(short).shape == a12.shape  # the decoder that would have taken it
    path = tmp_path / "cut.jpg"
    path.write_bytes(short)
    e = assert_reason(path, "damaged")
    assert "Invalid JPEG-LS stream" in str(e)
    path.write_bytes(data)
    np.testing.assert_allclose(decode(path).pixels, a12 / 4095, atol=1e-6)

    pytest.importorskip("pydicom")
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if not get_decoder(JPEGLSLossless).is_available:
        pytest.skip("no pydicom decoder for JPEG-LS installed here")
    decode(dicom_file(tmp_path / "ls.dcm", data, JPEGLSLossless, a12.shape, 12))
    e = assert_reason(dicom_file(tmp_path / "ls_cut.dcm", short, JPEGLSLossless, a12.shape, 12), "damaged")
    assert "its first frame: the JPEG-LS data" in str(e)


def test_twelve_bit_extended():
    imagecodecs = pytest.importorskip("imagecodecs")
    a12 = (film().astype(np.uint16) * 16).astype(np.uint16)
    data = imagecodecs.jpeg8_encode(a12, level=90, bitspersample=12)
    assert scan_shortfall(data) is None
    found = scan_shortfall(cut(data, 0.5))
    assert found is not None and found.reason == "truncated"


# ------------------------------------------------------------------ through decode()
@pytest.mark.parametrize("name", ["gray", "rgb 4:2:0", "gray progressive", "cmyk"])
@pytest.mark.parametrize("min_side", [None, 32])
def test_cut_jpeg_files_are_truncated_rows(tmp_path, name, min_side):
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut(VARIANTS[name], 0.4))
    with pytest.raises(ImageError) as ei:
        decode(path, min_side=min_side)
    msg = str(ei.value)
    assert ei.value.reason == "truncated", msg
    assert msg.startswith(str(path)) and "Expected" in msg and "Copy the file again" in msg
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(VARIANTS[name])
    decode(whole, min_side=min_side)


def test_damage_that_leaves_no_filled_end_is_found_where_it_can_hide(tmp_path):
    """Damage that leaves no filled end: restart markers (libjpeg resynchronises at the next,
    leaving a band), a zeroed stretch or a flipped bit without them, several scans (a later
    scan paints over the filled end), a small image cut in its last MCU row."""
    data = jpeg(film(400, 300), quality=90, restart_marker_rows=1)
    k = len(data) * 3 // 10
    sector = data[:k] + bytes(512) + data[k + 512:]  # one disk sector zeroed
    path = tmp_path / "sector.jpg"
    path.write_bytes(sector)
    assert_reason(path, "damaged")
    # No restart markers either: a zeroed stretch and a flipped bit in a large film, whose
    # decoded end need not show anything.
    plain = jpeg(film(400, 300), quality=90)
    k = len(plain) * 3 // 10  # a flip of a magnitude bit keeps the codes in step: this one does not
    for name, bad in [("zeroed", plain[:k] + bytes(64) + plain[k + 64:]),
                      ("bit", plain[:k] + bytes([plain[k] ^ 0x10]) + plain[k + 1:])]:
        path.write_bytes(bad)
        with pytest.raises(ImageError) as ei:
            decode(path)
        assert ei.value.reason in ("damaged", "truncated"), (name, ei.value)

    # Non-interleaved sequential (a scan a component): 2 KB missing inside the first scan.
    seq = _sequential_scans(rgb_film())
    if seq is not None:
        first, second = scan_starts(seq)[:2]
        spliced = seq[:first + 500] + seq[first + 2500:]
        path.write_bytes(spliced)
        assert_reason(path, "damaged")

    small = jpeg(film(40, 56))
    path.write_bytes(small[:len(small) - 40] + EOI)  # the last MCU row
    assert_reason(path, "truncated")


def _sequential_scans(a: np.ndarray) -> bytes | None:
    """A baseline JPEG with one scan a component, from libjpeg's own encoder (cjpeg -scans),
    or None where cjpeg is not installed."""
    import shutil
    import subprocess
    import tempfile

    cjpeg = shutil.which("cjpeg")
    if cjpeg is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src, script = f"{d}/in.ppm", f"{d}/scans.txt"
        Image.fromarray(a).save(src)
        with open(script, "w") as fh:
            fh.write("0;\n1;\n2;\n")
        return subprocess.run([cjpeg, "-scans", script, src], capture_output=True, check=True).stdout


def test_twelve_bit_jpeg_file_cut_is_truncated(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    a12 = (film().astype(np.uint16) * 16).astype(np.uint16)
    path = tmp_path / "x12.jpg"
    path.write_bytes(cut(imagecodecs.jpeg8_encode(a12, level=90, bitspersample=12), 0.5))
    assert_reason(path, "truncated")


@pytest.mark.parametrize("kind", ["baseline", "baseline reduced", "lossless SV1 12-bit"])
def test_dicom_jpeg_frame_cut_is_truncated(tmp_path, kind):
    pytest.importorskip("pydicom")
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1

    if kind.startswith("baseline"):
        ts, bits, frame, min_side = JPEGBaseline8Bit, 8, VARIANTS["gray"], 32 if "reduced" in kind else None
    else:
        ts, bits, frame, min_side = JPEGLosslessSV1, 12, lossless_variants()["12-bit"], None
    if not get_decoder(ts).is_available:
        pytest.skip(f"no pydicom decoder for {ts.name} installed here")

    def dicom(frame: bytes, path):
        return dicom_file(path, frame, ts, (250, 198), bits)

    whole = dicom(frame, tmp_path / "whole.dcm")
    decode(whole, min_side=min_side)
    for tail in (b"\xff\x00", b"\x00\x01\x02\x03", b"\xff\xfe\x00\x04hi"):  # bytes after EOI: pydicom reads it
        decode(dicom(frame + tail, tmp_path / "tail.dcm"), min_side=min_side)
    path = dicom(cut(frame, 0.5), tmp_path / "cut.dcm")
    with pytest.raises(ImageError) as ei:
        decode(path, min_side=min_side)
    assert ei.value.reason == "truncated", ei.value
    assert "its first frame: the JPEG image data stops early" in str(ei.value)
    # An interrupted copy padded with zeros: no end marker at all, which pydicom's plugins accept.
    half = len(frame) // 2
    path = dicom(frame[:half] + bytes(len(frame) - half), tmp_path / "zero_filled.dcm")
    with pytest.raises(ImageError) as ei:
        decode(path, min_side=min_side)
    assert ei.value.reason == "truncated" and "no end marker" in str(ei.value), ei.value


@pytest.mark.parametrize("tables", [False, True], ids=["full streams", "JPEGTables"])
def test_tiff_jpeg_strip_cut_or_zero_filled_is_truncated(tmp_path, tables):
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("imagecodecs")
    buf = io.BytesIO()
    if tables:  # libtiff (through Pillow) writes abbreviated streams and a JPEGTables tag
        Image.fromarray(film()).save(buf, "TIFF", compression="jpeg")
    else:
        tifffile.imwrite(buf, film(), compression="jpeg", rowsperstrip=64)
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        page = tif.pages[0]
        assert (page.jpegtables is not None) == tables
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    whole = tmp_path / "whole.tif"
    whole.write_bytes(data)
    decode(whole)
    strip = bytes(data[offset:offset + count])
    if not tables:  # a byte after EOI inside the strip's byte count: tifffile and libtiff read it
        with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
            page = tif.pages[0]
            strips = [bytes(data[o:o + c]) + b"\xff" for o, c in zip(page.dataoffsets, page.databytecounts)]
        tail = io.BytesIO()
        with tifffile.TiffWriter(tail) as writer:
            writer.write(iter(strips), shape=(250, 198), dtype="uint8", compression="jpeg", rowsperstrip=64,
                         photometric="minisblack")
        decode(write_to(tmp_path / "strip_tail.tif", tail.getvalue()))
    for name, damaged in [("cut_eoi", strip[:count // 2] + EOI), ("zero_filled", strip[:count // 2])]:
        data[offset:offset + count] = damaged + b"\0" * (count - len(damaged))
        path = tmp_path / f"{name}.tif"
        path.write_bytes(data)
        e = assert_reason(path, "truncated")
        assert "TIFF strip or tile" in str(e)
