"""xraynet.imaging: decoding every supported format and mode, every error
reason, the warning codes, and each preprocessing step. All images are made
here, small, in tmp_path (plus the shared broken-file set when present)."""
from __future__ import annotations

import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_reason
from PIL import Image

from xraynet import decoders, imaging
from xraynet.errors import ImageError, ShapeError, SpecError
from xraynet.imaging import Decoded, Preprocessing, decode, equalize_histogram, load, preprocess

LUMA = np.array([0.299, 0.587, 0.114])
BAD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bad"


# ------------------------------------------------------------------ helpers
def ramp(h=160, w=200):
    """uint8 image with distinct, smoothly varying values (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    return (20 + 200 * (x + y) / (h + w)).astype(np.uint8)


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def phantom(size=256, inverted=False) -> np.ndarray:
    """A crude frontal chest film: dark air, bright body, dark lungs either side of a bright mediastinum."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    img = np.full((size, size), 0.05)
    img[((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1] = 0.7
    for cx in (0.3, 0.7):
        img[((x - cx) / 0.13) ** 2 + ((y - 0.5) / 0.25) ** 2 < 1] = 0.2
    img[(np.abs(x - 0.5) < 0.07) & (y > 0.2) & (y < 0.85)] = 0.85
    return (1.0 - img if inverted else img).astype(np.float32)


def disc_image(w, h, r) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] + 0.5
    return (((x - w / 2) ** 2 + (y - h / 2) ** 2) < r * r).astype(np.float32) * 0.8 + 0.1


def extent(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1




# ---------------------------------------------------------- Pillow formats
def test_l_png_exact(tmp_path):
    a = ramp()
    d = decode(save(Image.fromarray(a), tmp_path / "l.png"))
    assert (d.source_format, d.source_mode, d.bit_depth) == ("png", "L", 8)
    assert (d.width, d.height) == (200, 160) and d.pixels.shape == (160, 200)
    assert d.pixels.dtype == np.float32 and d.pixels.flags.c_contiguous
    np.testing.assert_allclose(d.pixels, a / 255.0, atol=1e-7)


def test_16bit_png_keeps_precision(tmp_path):
    a = np.zeros((130, 140), np.uint16)
    a[:, :70] = 30000
    a[:, 70:] = 30001  # one 16-bit step apart: gone if squeezed through 8 bits
    a[0, 0], a[0, 1] = 0, 65535
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    d = decode(save(img, tmp_path / "g16.png"))
    assert (d.source_mode, d.bit_depth) == ("I;16", 16)
    assert d.pixels[5, 10] != d.pixels[5, 100]
    np.testing.assert_allclose(d.pixels, a / 65535.0, rtol=0, atol=1e-7)
    assert d.pixels[0, 0] == 0.0 and d.pixels[0, 1] == 1.0


def test_rgb_jpeg_is_luma(tmp_path):
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[:64] = (200, 100, 50)
    rgb[64:] = (30, 160, 220)
    d = decode(save(Image.fromarray(rgb), tmp_path / "c.jpg", quality=95))
    assert (d.source_format, d.source_mode, d.bit_depth) == ("jpeg", "RGB", 8)
    expected = rgb.astype(float) @ LUMA / 255.0
    # Compare away from the colour edge, where JPEG's 8x8 blocks ring.
    np.testing.assert_allclose(d.pixels[8:56], expected[8:56], atol=0.02)
    np.testing.assert_allclose(d.pixels[72:120], expected[72:120], atol=0.02)


def test_rgba_ignores_alpha(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (130, 130, 4), dtype=np.uint8)
    d = decode(save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert d.source_mode == "RGBA"
    np.testing.assert_allclose(d.pixels, rgba[..., :3].astype(float) @ LUMA / 255.0, atol=1e-5)


def test_palette_png(tmp_path):
    idx = np.zeros((130, 130), np.uint8)
    idx[:, 65:] = 1
    idx[100:] = 2
    img = Image.fromarray(idx).convert("P")  # then give it a real colour palette
    img.putpalette([10, 20, 30, 250, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    d = decode(save(img, tmp_path / "p.png"))
    assert d.source_mode == "P"
    palette = np.array([[10, 20, 30], [250, 0, 0], [0, 128, 255]], float) @ LUMA / 255.0
    np.testing.assert_allclose(d.pixels, palette[idx], atol=1e-5)


def test_cmyk_jpeg_matches_rgb(tmp_path):
    gray = ramp()
    rgb = Image.fromarray(np.stack([gray] * 3, axis=-1))
    d = decode(save(rgb.convert("CMYK"), tmp_path / "k.jpg", quality=95))
    assert (d.source_mode, d.bit_depth) == ("CMYK", 8)
    np.testing.assert_allclose(d.pixels, gray / 255.0, atol=0.03)


def test_la_uses_luminance_only(tmp_path):
    a = ramp()
    alpha = np.zeros_like(a)  # fully transparent, still the film underneath
    la = Image.merge("LA", (Image.fromarray(a), Image.fromarray(alpha)))
    d = decode(save(la, tmp_path / "la.png"))
    assert d.source_mode == "LA"
    np.testing.assert_allclose(d.pixels, a / 255.0, atol=1e-7)


def test_mode_1(tmp_path):
    bits = np.zeros((130, 150), bool)
    bits[:, 75:] = True
    d = decode(save(Image.fromarray(bits), tmp_path / "b.png"))
    assert (d.source_mode, d.bit_depth) == ("1", 1)
    np.testing.assert_array_equal(d.pixels, bits.astype(np.float32))


def test_float_and_32bit_tiff(tmp_path):
    f = np.linspace(0, 1, 130 * 140, dtype=np.float32).reshape(130, 140)
    d = decode(save(Image.fromarray(f), tmp_path / "f.tif"))
    assert (d.source_format, d.source_mode, d.bit_depth) == ("tiff", "F", 32)
    np.testing.assert_array_equal(d.pixels, f)
    i = (np.arange(130 * 140, dtype=np.int32).reshape(130, 140) * 3)  # fits 16 bits: scaled as 16-bit
    d = decode(save(Image.fromarray(i), tmp_path / "i.tif"))
    assert (d.source_mode, d.bit_depth) == ("I", 16)
    np.testing.assert_allclose(d.pixels, i / 65535.0, atol=1e-7)


def test_exif_orientation_applied(tmp_path):
    a = ramp(130, 180)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    d = decode(save(Image.fromarray(a), tmp_path / "o.jpg", exif=exif, quality=95))
    assert (d.width, d.height) == (130, 180)
    np.testing.assert_allclose(d.pixels, np.rot90(a, -1) / 255.0, atol=0.03)


def test_unsupported_mode(tmp_path):
    path = save(Image.new("LAB", (130, 130), (50, 0, 0)), tmp_path / "lab.tif")
    e = assert_reason(path, "unsupported_mode")
    assert "'LAB'" in str(e)


# ------------------------------------------------------------------- DICOM
def write_dicom(path, arr, pi="MONOCHROME2", bits=12, pixel_data=True, **elements):
    """An uncompressed, valid DICOM file (pydicom 3 API) holding ``arr``."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if pixel_data:
        set_pixel_data(ds, np.asarray(arr, np.uint16), pi, bits)
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    return Path(path)


def dicom_ramp(h=130, w=140, top=4095):
    return np.tile(np.linspace(0, top, w).round().astype(np.uint16), (h, 1))


def test_dicom_monochrome2_rescale(tmp_path):
    a = dicom_ramp()
    path = write_dicom(tmp_path / "m2.dcm", a, RescaleSlope="2", RescaleIntercept="-1024")
    d = decode(path)
    assert (d.source_format, d.source_mode, d.bit_depth) == ("dicom", "MONOCHROME2", 12)
    assert (d.width, d.height) == (140, 130)
    # A positive linear rescale followed by min-max gives the min-max of the raw values.
    np.testing.assert_allclose(d.pixels, a / 4095.0, atol=1e-6)


def test_dicom_window_applied_in_modality_units(tmp_path):
    a = np.full((130, 130), 1500, np.uint16)
    a[0, 0], a[0, 1] = 0, 4095  # saturate both ends of the window
    a[1, 0], a[1, 1], a[1, 2] = 1300, 1500, 1700
    # Modality value = 2 * raw - 2000, so the window centre 1000 is raw 1500;
    # a window applied to raw values instead would put raw 1500 at white.
    path = write_dicom(tmp_path / "w.dcm", a, RescaleSlope="2", RescaleIntercept="-2000",
                       WindowCenter="1000", WindowWidth="400")
    p = decode(path).pixels
    assert p[1, 0] == 0.0 and p[1, 2] == 1.0
    assert abs(p[1, 1] - 0.5) < 0.01


def test_dicom_monochrome1_inverted(tmp_path):
    a = dicom_ramp()
    d = decode(write_dicom(tmp_path / "m1.dcm", a, pi="MONOCHROME1"))
    assert d.source_mode == "MONOCHROME1"
    # MONOCHROME1: raw 0 is white. After decoding 0 is black everywhere.
    np.testing.assert_allclose(d.pixels, 1.0 - a / 4095.0, atol=1e-6)
    assert d.pixels[:, 0].min() == 1.0 and d.pixels[:, -1].max() == 0.0


def test_dicom_multiframe_first_frame(tmp_path):
    frames = np.stack([dicom_ramp(), np.full((130, 140), 7, np.uint16)])
    d = decode(write_dicom(tmp_path / "mf.dcm", frames))
    assert d.pixels.shape == (130, 140)
    np.testing.assert_allclose(d.pixels, frames[0] / 4095.0, atol=1e-6)


def test_dicom_detected_by_magic_without_extension(tmp_path):
    path = write_dicom(tmp_path / "IMG0001", dicom_ramp())
    assert decode(path).source_format == "dicom"


def test_dicom_rgb_is_luma(tmp_path):
    rgb = np.zeros((130, 130, 3), np.uint8)
    rgb[:, :65] = (200, 100, 50)
    rgb[:, 65:] = (0, 0, 0)
    rgb[0, 0] = (255, 255, 255)
    path = tmp_path / "rgb.dcm"
    write_dicom(path, None, pixel_data=False)
    import pydicom
    from pydicom.pixels import set_pixel_data

    ds = pydicom.dcmread(path)
    set_pixel_data(ds, rgb, "RGB", 8)
    ds.save_as(path, enforce_file_format=True)
    d = decode(path)
    assert (d.source_mode, d.bit_depth) == ("RGB", 8)
    np.testing.assert_allclose(d.pixels, rgb.astype(float) @ LUMA / 255.0, atol=1e-5)  # min-max: 0 and 255 present


def test_png_named_dcm_still_decodes(tmp_path):
    path = save(Image.fromarray(ramp()), tmp_path / "export.dcm", format="PNG")
    d = decode(path)
    assert d.source_format == "png" and d.width == 200


def test_dicom_without_pixel_data(tmp_path):
    e = assert_reason(write_dicom(tmp_path / "sr.dcm", None, pixel_data=False), "dicom_unsupported")
    assert "pixel data" in str(e).lower()


def test_dicom_truncated(tmp_path):
    raw = write_dicom(tmp_path / "full.dcm", dicom_ramp()).read_bytes()
    path = tmp_path / "half.dcm"
    path.write_bytes(raw[: len(raw) // 2])
    assert_reason(path, "truncated")


def test_dicom_extension_with_text_is_not_an_image(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("Findings: no acute disease.\n" * 4)
    pytest.importorskip("pydicom")
    assert_reason(path, "not_an_image")


def test_dicom_without_pydicom(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "m2.dcm", dicom_ramp())
    for name in ("pydicom", "pydicom.errors", "pydicom.pixels"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    e = assert_reason(path, "dicom_needs_pydicom")
    assert 'pip install "xraynet[dicom]"' in str(e)


# ------------------------------------------------------------------ errors
def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_reason(path, "empty")


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated(tmp_path, fmt, suffix):
    rng = np.random.default_rng(1)
    full = save(Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)), tmp_path / f"full{suffix}",
                format=fmt)
    raw = full.read_bytes()
    half = tmp_path / f"half{suffix}"
    half.write_bytes(raw[: len(raw) // 2])
    e = assert_reason(half, "truncated")
    assert fmt in str(e)
    tiny = tmp_path / f"tiny{suffix}"
    tiny.write_bytes(raw[:20])  # the signature, half a header: still recognisably cut short
    assert_reason(tiny, "truncated")


def test_text_named_jpg(tmp_path):
    path = tmp_path / "report.jpg"
    path.write_text("CHEST PA: lungs are clear. No effusion.\n")
    e = assert_reason(path, "not_an_image")
    assert "CHEST PA" in str(e)


def test_missing_file_and_directory(tmp_path):
    e = assert_reason(tmp_path / "nope.png", "unreadable")
    assert "does not exist" in str(e)
    (tmp_path / "dir.png").mkdir()
    assert_reason(tmp_path / "dir.png", "unreadable")


def test_too_large_own_limit(tmp_path, monkeypatch):
    path = save(Image.fromarray(ramp(50, 40)), tmp_path / "big.png")
    monkeypatch.setattr(decoders, "MAX_PIXELS", 1999)
    e = assert_reason(path, "too_large")
    assert "2,000" in str(e) and "1,999" in str(e)
    dcm = write_dicom(tmp_path / "big.dcm", dicom_ramp(50, 40))
    assert "2,000" in str(assert_reason(dcm, "too_large"))


def test_too_large_pillow_bomb_limit(tmp_path, monkeypatch):
    # A palette PNG: Pillow decodes it (8-bit gray, RGB and RGBA PNG go to libpng, which
    # knows no Pillow limit; xraynet's own MAX_PIXELS, checked before decoding, covers both).
    path = save(Image.fromarray(ramp(50, 40)).convert("P"), tmp_path / "big.png")
    # Pillow raises its DecompressionBombError above twice MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    assert_reason(path, "too_large")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # only Pillow's warning: xraynet's limit rules
    assert decode(path).width == 40


def test_decode_in_threads(tmp_path):
    # Training decodes in a thread pool: results must not depend on it, and
    # the warning filters must come back as they were.
    from concurrent.futures import ThreadPoolExecutor

    paths = [save(Image.fromarray(np.roll(ramp(), 7 * i, axis=1)), tmp_path / f"{i}.png") for i in range(12)]
    decode(paths[0])  # the first decode installs xraynet's one "always" filter for decoding libraries
    before = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(decode, paths))
    assert list(warnings.filters) == before
    for p, d in zip(paths, threaded):
        np.testing.assert_array_equal(d.pixels, decode(p).pixels)


def test_image_error_pickles_with_reason():
    e = pickle.loads(pickle.dumps(ImageError("x.png: bad. Expected a, got b. Fix.", "truncated", "x.png")))
    assert (e.reason, e.path, str(e)) == ("truncated", "x.png", "x.png: bad. Expected a, got b. Fix.")
    with pytest.raises(ValueError):
        ImageError("msg", "no_such_reason")


# ---------------------------------------------------------------- warnings
def test_warnings(tmp_path):
    clean = decode(save(Image.fromarray((phantom() * 255).astype(np.uint8)), tmp_path / "ok.png"))
    assert clean.warnings == []
    inv = decode(save(Image.fromarray((phantom(inverted=True) * 255).astype(np.uint8)), tmp_path / "inv.png"))
    assert inv.warnings == ["likely_inverted"]
    assert "tiny" in decode(save(Image.fromarray(ramp(100, 300)), tmp_path / "t.png")).warnings
    wide = decode(save(Image.fromarray(ramp(130, 400)), tmp_path / "w.png")).warnings
    tall = decode(save(Image.fromarray(ramp(400, 130)), tmp_path / "h.png")).warnings
    assert "extreme_aspect" in wide and "extreme_aspect" in tall and "tiny" not in wide
    flat = decode(save(Image.new("L", (200, 200), 128), tmp_path / "flat.png")).warnings
    assert flat == ["nearly_uniform"]
    assert set(imaging.WARNING_CODES) == {"tiny", "extreme_aspect", "nearly_uniform", "likely_inverted",
                                          "not_frontal", "not_radiograph", "not_chest", "for_processing",
                                          "decoder_warning"}


# ----------------------------------------------------------- preprocessing
def test_default_shape_dtype_and_normalisation():
    out = preprocess(phantom(300), Preprocessing(fit="crop"))
    assert out.shape == (224, 224) and out.dtype == np.float32
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1.0) < 1e-3


@pytest.mark.parametrize("fit", ["pad", "crop"])
@pytest.mark.parametrize("w,h", [(300, 180), (180, 300)])
def test_disc_stays_round(fit, w, h):
    out = preprocess(disc_image(w, h, 80), Preprocessing(image_size=96, fit=fit, normalize="fixed"))
    dh, dw = extent(out > 0.0)  # disc 0.9 -> 1.6, background 0.1 -> -1.6
    assert abs(dh - dw) <= 1, (dh, dw)
    scale = 96 / (max(w, h) if fit == "pad" else min(w, h))
    assert abs(dh - 160 * scale) <= 2


def test_pad_layout_and_value():
    img = np.full((150, 300), 0.5, np.float32)
    fixed = preprocess(img, Preprocessing(image_size=64, fit="pad", normalize="fixed"))
    # 300x150 -> 64x32, centred: 16 rows of black padding above and below.
    np.testing.assert_array_equal(fixed[:16], -2.0)
    np.testing.assert_array_equal(fixed[48:], -2.0)
    np.testing.assert_allclose(fixed[16:48], 0.0, atol=1e-6)
    rng = np.random.default_rng(2)
    per = preprocess(rng.random((150, 300)).astype(np.float32), Preprocessing(image_size=64, fit="pad"))
    content = per[16:48]
    # Statistics come from the image alone, whatever the padding.
    assert abs(content.mean()) < 1e-4 and abs(content.std() - 1.0) < 1e-3
    assert np.all(per[:16] == per[0, 0]) and per[0, 0] < content.min()


def test_crop_keeps_centre():
    img = np.zeros((100, 300), np.float32)
    img[:, 100:200] = 1.0  # exactly the centre square
    out = preprocess(img, Preprocessing(image_size=50, fit="crop", normalize="fixed"))
    np.testing.assert_allclose(out[:, 1:-1], 2.0, atol=1e-6)
    # The filter reaches half a source pixel past the crop: the edge columns
    # are mostly, not only, the centre square.
    assert np.all(out[:, [0, -1]] > 1.0)


def test_border_crop_removes_frame():
    img = np.full((200, 200), 0.5, np.float32)
    img[:20], img[-20:], img[:, :20], img[:, -20:] = 1.0, 1.0, 1.0, 1.0  # burned-in frame, 10% wide
    kept = preprocess(img, Preprocessing(image_size=40, fit="crop", normalize="fixed"))
    cut = preprocess(img, Preprocessing(image_size=40, fit="crop", normalize="fixed", border_crop=0.1))
    assert kept.max() == pytest.approx(2.0)
    np.testing.assert_allclose(cut, 0.0, atol=1e-6)


def test_equalize():
    skewed = (np.linspace(0, 1, 64 * 64).reshape(64, 64) ** 4).astype(np.float32)
    out = preprocess(skewed, Preprocessing(image_size=64, fit="crop", equalize=True, normalize="fixed"))
    x = out * 0.25 + 0.5  # back to [0, 1]
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    # Uniform after equalisation: the quartiles sit at 0.25, 0.5, 0.75.
    np.testing.assert_allclose(np.quantile(x, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75], atol=0.02)
    eq = equalize_histogram(skewed)
    assert np.all(np.diff(eq.ravel()) >= 0)  # order kept
    np.testing.assert_array_equal(equalize_histogram(np.full((5, 5), 0.3, np.float32)), 0.0)


def test_working_size_resamples_first():
    step = np.zeros((128, 128), np.float32)
    step[:, 64:] = 1.0
    prep = dict(image_size=64, fit="crop", normalize="fixed")
    sharp = preprocess(step, Preprocessing(**prep))[32]
    soft = preprocess(step, Preprocessing(**prep, working_size=8))[32]
    # The edge survives at full resolution but is smeared over several output
    # pixels when everything first goes through an 8-pixel working image.
    grey = lambda row: int(np.sum((row > -1.9) & (row < 1.9)))  # noqa: E731
    assert grey(sharp) <= 2 and grey(soft) >= 8


def test_working_size_sets_the_short_side(monkeypatch):
    sizes = []
    real = imaging._resize

    def spy(pixels, size, box=None):
        sizes.append(size)
        return real(pixels, size, box)

    monkeypatch.setattr(imaging, "_resize", spy)
    for shape in [(200, 400), (400, 200), (50, 100)]:  # (h, w): down- and upsampling
        sizes.clear()
        preprocess(np.zeros(shape, np.float32), Preprocessing(image_size=32, working_size=100))
        h, w = shape
        assert sizes[0] == (100 * w // min(h, w), 100 * h // min(h, w))
        assert max(sizes[1]) == 32


def test_preprocess_is_deterministic_and_takes_decoded(tmp_path):
    path = save(Image.fromarray((phantom() * 255).astype(np.uint8)), tmp_path / "x.png")
    prep = Preprocessing(image_size=64, equalize=True, border_crop=0.05, working_size=128)
    arr, d = load(path, prep)
    assert isinstance(d, Decoded) and arr.shape == (64, 64)
    np.testing.assert_array_equal(arr, preprocess(d, prep))
    np.testing.assert_array_equal(arr, preprocess(d.pixels, prep))


def test_preprocess_rejects_bad_input():
    with pytest.raises(ShapeError, match="Expected a non-empty 2-D"):
        preprocess(np.zeros((3, 10, 10), np.float32), Preprocessing())
    with pytest.raises(SpecError, match="Preprocessing"):
        preprocess(np.zeros((10, 10), np.float32), {"image_size": 64})


def test_preprocessing_dict_round_trip():
    prep = Preprocessing(image_size=128, fit="crop", border_crop=0.05, equalize=True, normalize="fixed",
                         working_size=512)
    d = prep.to_dict()
    assert d == {"image_size": 128, "fit": "crop", "border_crop": 0.05, "equalize": True,
                 "normalize": "fixed", "working_size": 512}
    assert Preprocessing.from_dict(json.loads(json.dumps(d))) == prep
    assert Preprocessing.from_dict({}) == Preprocessing()
    assert Preprocessing.from_dict({"border_crop": 0}).border_crop == 0.0


@pytest.mark.parametrize("bad", [
    {"image_size": 0}, {"image_size": "224"}, {"image_size": True}, {"image_size": 224.0},
    {"fit": "squash"}, {"border_crop": 0.5}, {"border_crop": -0.1}, {"border_crop": "0.1"},
    {"equalize": "yes"}, {"equalize": 1}, {"normalize": "minmax"}, {"working_size": 0},
    {"working_size": 256.5}, {"colour": "gray"},
])
def test_preprocessing_validation(bad):
    with pytest.raises(SpecError) as ei:
        Preprocessing.from_dict(bad)
    msg = str(ei.value)
    assert msg.startswith("preprocessing: ") and "Expected" in msg and "got" in msg
    assert next(iter(bad)) in msg


def test_preprocessing_from_dict_needs_a_dict():
    with pytest.raises(SpecError, match="not a mapping"):
        Preprocessing.from_dict([("image_size", 64)])


def test_key_is_stable():
    key = Preprocessing().key()
    # Pinned: this value changes only when PIPELINE_VERSION or the fields change,
    # and then every decode cache must miss (which is the point).
    assert key == "d942b8c2acac4d03"
    assert Preprocessing(image_size=224, border_crop=0).key() == key
    variants = [Preprocessing(image_size=225), Preprocessing(fit="crop"), Preprocessing(border_crop=0.01),
                Preprocessing(equalize=True), Preprocessing(normalize="fixed"), Preprocessing(working_size=512)]
    keys = {p.key() for p in variants}
    assert len(keys) == len(variants) and key not in keys


# ------------------------------------------------------- shared broken files
BAD_EXPECTED = {
    "gray16bit_xray.png": ("ok", "I;16"),
    "rgba_xray.png": ("ok", "RGBA"),
    "cmyk_xray.jpg": ("ok", "CMYK"),
    "truncated_half_jpeg.jpg": ("error", "truncated"),
    "empty_zero_bytes.png": ("error", "empty"),
    "text_file_not_image.jpg": ("error", "not_an_image"),
}


@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_shared_bad_files(name):
    if not BAD_DIR.is_dir():
        pytest.skip(f"shared broken-file set not found at {BAD_DIR}")
    path = BAD_DIR / name
    if not path.exists():
        pytest.skip(f"{path} missing from the shared set")
    kind, expected = BAD_EXPECTED[name]
    if kind == "error":
        assert_reason(path, expected)
        return
    d = decode(path)
    assert d.source_mode == expected
    assert 0.3 < d.pixels.mean() < 0.8 and d.pixels.std() > 0.1  # a real film, not black or blank
    assert "likely_inverted" not in d.warnings and "nearly_uniform" not in d.warnings


def test_shared_16bit_and_rgba_agree():
    # Both were made from one 8-bit film: 16-bit = value * 257, RGBA = gray in R, G, B.
    a, b = BAD_DIR / "gray16bit_xray.png", BAD_DIR / "rgba_xray.png"
    if not (a.exists() and b.exists()):
        pytest.skip(f"shared broken-file set not found at {BAD_DIR}")
    np.testing.assert_allclose(decode(a).pixels, decode(b).pixels, atol=1e-5)


# ------------------------------------------------------------- reduced-size decoding
def textured_film(h=800, w=1000, seed=0) -> np.ndarray:
    """float (h, w) in [0, 1]: two dark lungs on a brighter field, with pixel noise."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    img = 0.7 + 0.03 * rng.standard_normal((h, w))
    for cx in (0.3, 0.7):
        img[((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] -= 0.45
    return np.clip(img, 0, 1)


def block_means(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def test_reduction_factor_keeps_the_short_side():
    r = decoders.Reduction(143)
    assert r.factor(1000, 800) == 5 and r.factor(1000, 800, (8, 4, 2)) == 4
    assert r.factor(1000, 285) == 1 and r.factor(1000, 286) == 2
    assert r.factor(100, 100) == 1 and r.factor(100, 100, (8, 4, 2)) == 1
    # bundled model: 128 px, border crop 0.08 -> 2 * 128 / 0.84
    assert imaging.reduced_side(Preprocessing(image_size=128, border_crop=0.08)) == 305
    assert imaging.reduced_side(Preprocessing(image_size=64, working_size=200)) == 400


def test_png_reduces_to_exact_block_means(tmp_path):
    g = (textured_film(300, 210) * 255).astype(np.uint8)
    path = save(Image.fromarray(g), tmp_path / "f.png")
    full, red = decode(path), decode(path, min_side=60)  # 210 // 60 = 3
    assert red.pixels.shape == (100, 70) and red.pixels.dtype == np.float32
    assert (red.width, red.height) == (full.width, full.height) == (210, 300)
    np.testing.assert_allclose(red.pixels, block_means(full.pixels, 3), atol=1e-6)
    same = decode(path, min_side=106)  # 210 // 106 = 1: nothing to reduce
    np.testing.assert_array_equal(same.pixels, full.pixels)


def test_reduction_keeps_the_geometry_when_the_factor_does_not_divide(tmp_path):
    # 301 x 200 by 3: 100 x 67 pixels, each the mean of the stored pixels whose centres lie in
    # the 3.01 x 2.985 it covers: a bright edge stays at the edge, nothing stretches.
    img = np.full((301, 200), 0.2)
    img[:, -2:] = 1.0
    path = save(Image.fromarray((img * 255).round().astype(np.uint8)), tmp_path / "edge.png")
    red = decode(path, min_side=60)
    assert red.pixels.shape == (100, 67)
    np.testing.assert_allclose(red.pixels[:, :-1], 51 / 255, atol=1e-5)
    np.testing.assert_allclose(red.pixels[:, -1], (51 + 2 * 255) / 3 / 255, atol=1e-5)  # columns 197-199


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_decodes_scaled_close_to_block_means(tmp_path, mode):
    g = (textured_film() * 255).astype(np.uint8)
    img = Image.fromarray(g if mode == "L" else np.stack([g] * 3, -1))
    path = save(img, tmp_path / "f.jpg", quality=95)
    full, red = decode(path), decode(path, min_side=200)  # DCT scaling 1/4: 800 // 4 = 200
    assert red.pixels.shape == (200, 250) and (red.width, red.height) == (1000, 800)
    assert red.source_mode == full.source_mode == mode
    diff = np.abs(red.pixels - block_means(full.pixels, 4))
    # libjpeg's scaled IDCT is a block mean of the DCT-smoothed block: close, not equal.
    assert diff.mean() < 2 / 255 and diff.max() < 0.2, (diff.mean(), diff.max())
    # 800 // 143 = 5: DCT scaling does 4, area means the rest (to 160 x 200).
    five = decode(path, min_side=143)
    assert five.pixels.shape == (160, 200) and (five.width, five.height) == (1000, 800)
    diff = np.abs(five.pixels - block_means(full.pixels, 5))
    assert diff.mean() < 2 / 255 and diff.max() < 0.3, (diff.mean(), diff.max())


def test_jpeg_scaled_decoding_keeps_exif_orientation(tmp_path):
    g = (textured_film(400, 600) * 255).astype(np.uint8)
    g[:40, :60] = 255  # a bright corner tells which way the film turned
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = save(Image.fromarray(g), tmp_path / "o.jpg", quality=95, exif=exif)
    full, red = decode(path), decode(path, min_side=100)  # 400 // 4 = 100
    assert full.pixels.shape == (600, 400) and (full.width, full.height) == (400, 600)
    assert red.pixels.shape == (150, 100) and (red.width, red.height) == (400, 600)
    np.testing.assert_allclose(red.pixels, block_means(full.pixels, 4), atol=0.15)
    # the bright 40 x 60 corner turned into the top right 60 x 40, in both
    assert full.pixels[:55, -35:].mean() > 0.9 and red.pixels[:13, -8:].mean() > 0.9


def test_reduced_warnings_judge_the_stored_size(tmp_path):
    wide = np.tile((textured_film(100, 100) * 255).astype(np.uint8), (1, 30))  # 3000 x 100
    path = save(Image.fromarray(wide), tmp_path / "wide.png")
    red = decode(path, min_side=20)  # 100 // 20 = 5: 600 x 20 pixels, still 3000 x 100 stored
    assert red.pixels.shape == (20, 600) and (red.width, red.height) == (3000, 100)
    assert red.warnings == decode(path).warnings == ["tiny", "extreme_aspect"]


def test_dicom_and_16_bit_png_reduce_by_block_means(tmp_path):
    from helpers import write_film

    film = textured_film(240, 318)
    for kind in ("dicom", "png16"):
        path = write_film(tmp_path / f"f_{kind}", film, kind)
        full, red = decode(path), decode(path, min_side=80)  # 240 // 80 = 3
        assert red.pixels.shape == (80, 106) and (red.width, red.height) == (318, 240), kind
        np.testing.assert_allclose(red.pixels, block_means(full.pixels, 3), atol=1e-6)


@pytest.mark.parametrize("prep", [Preprocessing(image_size=64, fit="pad", border_crop=0.05),
                                  Preprocessing(image_size=64, fit="stretch"),
                                  Preprocessing(image_size=48, fit="crop", normalize="fixed")])
def test_load_reduces_within_tolerance_of_full_decoding(tmp_path, prep):
    g = (textured_film() * 255).astype(np.uint8)
    files = [save(Image.fromarray(g), tmp_path / "f.png"), save(Image.fromarray(g), tmp_path / "f.jpg", quality=95)]
    for path in files:
        x, d = load(path, prep)
        assert min(d.pixels.shape) >= imaging.reduced_side(prep) and max(d.pixels.shape) < 1000
        full = preprocess(decode(path), prep)
        diff = np.abs(x - full)  # normalised units (per-image z-scores, or (x - 0.5) / 0.25)
        # Measured on this film: mean 0.003 (PNG) / 0.009 (JPEG), max 0.04 / 0.22.
        assert diff.mean() < 0.03 and diff.max() < 0.4, (path.name, diff.mean(), diff.max())
        assert np.corrcoef(x.ravel(), full.ravel())[0, 1] > 0.999


def test_load_decodes_at_full_size_when_reduction_is_off(tmp_path, monkeypatch):
    path = save(Image.fromarray((textured_film() * 255).astype(np.uint8)), tmp_path / "f.png")
    prep = Preprocessing(image_size=64)
    key = prep.key()
    monkeypatch.setattr(imaging, "REDUCED_DECODING", False)
    x, d = load(path, prep)
    assert d.pixels.shape == (800, 1000)
    np.testing.assert_array_equal(x, preprocess(decode(path), prep))
    assert prep.key() != key  # a cache of reduced decodes never answers for full ones
    off = prep.key()
    monkeypatch.setattr(imaging, "REDUCED_DECODING", True)
    monkeypatch.setattr(imaging, "REDUCE_MARGIN", 3.0)
    assert len({key, off, prep.key()}) == 3


def _equalize_reference(p: np.ndarray, bins: int = imaging.EQUALIZE_BINS) -> np.ndarray:
    """The definition: np.histogram over [min, max], np.interp through its normalised cumulative sum."""
    lo, hi = float(p.min()), float(p.max())
    hist, edges = np.histogram(p, bins=bins, range=(lo, hi))
    cdf = np.concatenate([[0.0], np.cumsum(hist)]) / p.size
    return np.interp(p, edges, cdf).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 2), (7, 300), (64, 64), (300, 7), (1500, 1200)])
def test_equalize_matches_histogram_and_interp(shape):
    p = np.random.default_rng(shape[0]).beta(2, 5, shape).astype(np.float32)
    # np.histogram places a value within float32 rounding of a bin edge in either bin (it
    # compares with float32 edges, equalize_histogram with float64 arithmetic): each such
    # value moves the cumulative frequency by 1 / size.
    np.testing.assert_allclose(equalize_histogram(p), _equalize_reference(p), atol=1e-5 + 2 / p.size)
    assert equalize_histogram(p).dtype == np.float32


def test_equalize_takes_a_range_narrower_than_its_bins():
    # 5 float32 steps of 6e-8 apart: np.histogram refuses 4096 bins on them.
    p = np.float32(0.9) + np.arange(6, dtype=np.float32).reshape(2, 3) * np.float32(6e-8)
    np.testing.assert_allclose(equalize_histogram(p), np.arange(6).reshape(2, 3) / 5, atol=1e-6)


def test_equalize_refuses_non_finite_values():
    with pytest.raises(ShapeError, match="non-finite") as ei:
        equalize_histogram(np.array([[0.1, np.nan]], np.float32))
    assert "Expected finite values, got" in str(ei.value)
