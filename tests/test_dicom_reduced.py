"""Compressed DICOM frames decoded at reduced size (xraynet.decoders.dicom.reduced):
8-bit JPEG and JPEG 2000 frames give the same film as the full-size decode
followed by area means, to within what a scaled inverse DCT or a wavelet
low-pass differs from a block mean; the stored size is still reported; other
codecs stay full size; a codestream that disagrees with the header goes to
the full-size path; and every file the full-size path refuses is refused with
the same reason (cut, corrupt)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.encaps import encapsulate, get_frame  # noqa: E402
from pydicom.pixels import get_encoder, set_pixel_data  # noqa: E402
from pydicom.uid import (DigitalXRayImageStorageForPresentation, HTJ2KLossless, JPEG2000Lossless,  # noqa: E402
                         JPEGBaseline8Bit,
                         generate_uid)

import xraynet.decoders.dicom.pixels as dicom_pixels  # noqa: E402
from xraynet.decoders import Reduction  # noqa: E402
from xraynet.decoders.dicom.reduced import decode_reduced  # noqa: E402
from xraynet.errors import ImageError  # noqa: E402
from xraynet.imaging import decode  # noqa: E402

ROWS, COLS = 200, 168


def film(rows=ROWS, cols=COLS, seed=0) -> np.ndarray:
    """A smooth chest-like film in [0, 1] with a little noise."""
    y, x = (np.mgrid[0:rows, 0:cols] + 0.5) / np.array([rows, cols])[:, None, None]
    img = 0.1 + 0.1 * y
    img = np.where(((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1, 0.7 - 0.2 * np.abs(x - 0.5), img)
    for cx in (0.3, 0.7):
        img = np.where(((x - cx) / 0.13) ** 2 + ((y - 0.5) / 0.25) ** 2 < 1, 0.25 + 0.2 * y, img)
    return np.clip(img + np.random.default_rng(seed).normal(0, 0.01, img.shape), 0, 1)


def dx(stored: np.ndarray, bits: int) -> Dataset:
    ds = Dataset()
    set_pixel_data(ds, stored, "MONOCHROME2", bits)
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    return ds


def stored_values(bits: int, signed: bool, rows=ROWS, cols=COLS) -> np.ndarray:
    lo = -(1 << (bits - 1)) if signed else 0
    values = np.round(lo + film(rows, cols) * ((1 << bits) - 1))
    return values.astype(f"{'i' if signed else 'u'}{2 if bits > 8 else 1}")


def j2k_file(path, bits=12, signed=False, rows=ROWS, cols=COLS):
    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder installed here")
    ds = dx(stored_values(bits, signed, rows, cols), bits)
    ds.compress(JPEG2000Lossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_file(path, rows=ROWS, cols=COLS, frame: bytes | None = None):
    if frame is None:
        buf = io.BytesIO()
        Image.fromarray(stored_values(8, False, rows, cols)).save(buf, "JPEG", quality=95)
        frame = buf.getvalue()
    ds = dx(np.zeros((rows, cols), np.uint8), 8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def spy(monkeypatch):
    """Records the scale of every frame the reduced decoder took (None: left to the full path)."""
    taken = []

    def recording(frame, ts, ds, reduce, path=None):
        arr = decode_reduced(frame, ts, ds, reduce, path)
        taken.append(None if arr is None else reduce.scale)
        return arr

    monkeypatch.setattr(dicom_pixels, "decode_reduced", recording)
    return taken


def assert_same_film(got, want, mean=0.01, worst=0.1):
    """The reduced film against the full-size one: the same picture. Compared after mapping
    each image's 1st..99th percentile to 0..1: the display pipeline stretches a film without a
    VOI window to its own extremes, which a reduction moves (full-size noise reaches further
    than block means; a wavelet low-pass rings past an edge), and histogram equalisation, the
    network's next step, does not see such a change of range at all. ``mean`` and ``worst``:
    bounds on the mean and the largest difference of the mapped images."""
    a, b = (np.asarray(x, np.float64) for x in (got, want))
    assert a.shape == b.shape
    a, b = ((x - np.percentile(x, 1)) / (np.percentile(x, 99) - np.percentile(x, 1)) for x in (a, b))
    diff = np.abs(a - b)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert diff.mean() < mean and diff.max() < worst, (diff.mean(), diff.max())


def full_then_area(monkeypatch, path, min_side):
    """What decode(path, min_side) gave before: the frame at full size, then area means."""
    with monkeypatch.context() as m:
        m.setattr(dicom_pixels, "decode_reduced", lambda *a, **k: None)
        return decode(path, min_side=min_side)


def test_jpeg_baseline_reduced_matches_full_size_then_area_means(tmp_path, monkeypatch, spy):
    path = jpeg_file(tmp_path / "jpeg.dcm")
    got = decode(path, min_side=40)
    want = full_then_area(monkeypatch, path, 40)
    assert spy == [4]
    assert (got.width, got.height) == (COLS, ROWS) and got.pixels.shape == want.pixels.shape
    assert_same_film(got.pixels, want.pixels)


def test_full_size_decode_is_unchanged(tmp_path, spy):
    # decode() without min_side (thumbnails, the review page) never reduces.
    path = jpeg_file(tmp_path / "jpeg.dcm")
    assert decode(path).pixels.shape == (ROWS, COLS)
    assert spy == [None]


@pytest.mark.parametrize("bits, signed", [(12, False), (16, True), (16, False), (8, False)])
def test_j2k_reduced_matches_full_size_then_area_means(tmp_path, monkeypatch, spy, bits, signed):
    # 336 // 40 = 8: the levels take half of it (1/4), area means the other 2x2.
    path = j2k_file(tmp_path / "j2k.dcm", bits, signed, rows=400, cols=336)
    got = decode(path, min_side=40)
    want = full_then_area(monkeypatch, path, 40)
    assert spy == [4]
    assert (got.width, got.height) == (336, 400) and got.pixels.shape == want.pixels.shape == (50, 42)
    # the synthetic film's sharp, high-contrast edges are the worst case of the low-pass's ringing
    assert_same_film(got.pixels, want.pixels, mean=0.025, worst=0.4)
    assert got.warnings == want.warnings


def test_j2k_takes_at_most_half_the_reduction(tmp_path, monkeypatch, spy):
    path = j2k_file(tmp_path / "j2k.dcm")
    decode(path, min_side=60)  # 168 // 60 = 2: a level would be all of it
    decode(path, min_side=50)  # 3: still under 2 x 2
    got = decode(path, min_side=40)  # 4: one level, then 2x2 means
    assert spy == [None, None, 2]
    assert_same_film(got.pixels, full_then_area(monkeypatch, path, 40).pixels, mean=0.025, worst=0.4)


def test_j2k_side_pillow_would_size_differently_takes_a_smaller_scale(tmp_path, monkeypatch, spy):
    # 401 rows at 1/4: Pillow sizes 100 rows, OpenJPEG decodes ceil(401 / 4) = 101; 1/2 agrees (201).
    path = j2k_file(tmp_path / "odd.dcm", rows=401, cols=337)
    got = decode(path, min_side=40)
    assert spy == [2]
    assert_same_film(got.pixels, full_then_area(monkeypatch, path, 40).pixels, mean=0.025, worst=0.4)


def test_native_frames_are_area_means_only(tmp_path, spy):
    ds = dx(stored_values(12, False), 12)
    ds.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    got = decode(tmp_path / "native.dcm", min_side=20)
    assert spy == [None] and got.pixels.shape == (25, 21) and (got.width, got.height) == (COLS, ROWS)


def test_small_films_and_colour_are_not_reduced(tmp_path, spy):
    decode(jpeg_file(tmp_path / "small.dcm", rows=60, cols=50), min_side=40)  # 50 // 40 = 1
    buf = io.BytesIO()
    Image.fromarray(np.stack([stored_values(8, False)] * 3, axis=-1)).save(buf, "JPEG", quality=95)
    ds = pydicom.dcmread(jpeg_file(tmp_path / "gray.dcm"))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    frame = buf.getvalue()
    assert decode_reduced(frame, ds.file_meta.TransferSyntaxUID, ds, Reduction(20)) is None
    assert spy == [None]


@pytest.mark.parametrize("kind", ["j2k", "jpeg"])
def test_cut_and_corrupt_frames_keep_their_reasons(tmp_path, kind):
    path = j2k_file(tmp_path / "full.dcm") if kind == "j2k" else jpeg_file(tmp_path / "full.dcm")
    raw = path.read_bytes()
    ds = pydicom.dcmread(path)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    cases = {"truncated": [raw[:len(raw) // 2], raw[:len(raw) - 9]]}
    corrupt = frame[:len(frame) // 2] + b"\xff\xd9"  # cut, then closed with its end marker
    bad = tmp_path / "corrupt.dcm"
    if kind == "j2k":
        ds.PixelData = encapsulate([corrupt])
        ds.save_as(bad, enforce_file_format=True)
    else:
        jpeg_file(bad, frame=corrupt)
    for reason, blobs in cases.items():
        for blob in blobs:
            cut = tmp_path / "cut.dcm"
            cut.write_bytes(blob)
            for min_side in (None, 20):
                with pytest.raises(ImageError) as ei:
                    decode(cut, min_side=min_side)
                assert ei.value.reason == reason, (min_side, str(ei.value))
    outcomes = []
    for min_side in (None, 20):
        try:
            decode(bad, min_side=min_side)
            outcomes.append("ok")
        except ImageError as e:
            outcomes.append(e.reason)
    assert outcomes[0] == outcomes[1], outcomes
    if kind == "j2k":  # its tile-part's length (Psot) runs past the end: cut short, whatever ends it
        assert outcomes[0] == "truncated"


def _outcome(path, min_side):
    try:
        d = decode(path, min_side=min_side)
        return "ok", d.pixels
    except ImageError as e:
        return e.reason, None


@pytest.mark.parametrize("case", ["lower-case photometric", "16 bits allocated for 8", "6 bits stored"])
def test_files_the_full_path_takes_otherwise_are_not_reduced(tmp_path, spy, case):
    # What pydicom refuses (or masks) must not become a plain row because the film was big.
    # A lower-case interpretation, and 16 bits allocated for 8-bit JPEG samples, are set
    # right before either path looks at them, so the reduced path may take them; the two
    # paths must agree on every case.
    ds = pydicom.dcmread(jpeg_file(tmp_path / "jpeg.dcm"))
    if case == "lower-case photometric":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns at once about the invalid code string
            ds.PhotometricInterpretation = "monochrome2"
    elif case == "16 bits allocated for 8":
        ds.BitsAllocated = 16
    else:
        ds.BitsStored, ds.HighBit = 6, 5
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    reduced, full = _outcome(path, 20), _outcome(path, None)
    assert reduced[0] == full[0], (reduced[0], full[0])
    if case == "6 bits stored":
        assert spy[0] is None
    else:
        assert full[0] == "ok"


@pytest.mark.parametrize("center, width, function, reduced", [
    (128, 300, "LINEAR", True),     # covers every value: affine, so means and display commute
    (140, 60, "LINEAR", False),     # clips much of the film
    (128, 300, "SIGMOID", False),   # not affine anywhere
])
def test_reduced_only_where_the_display_is_affine_over_the_film(tmp_path, monkeypatch, spy, center, width, function,
                                                               reduced):
    ds = pydicom.dcmread(jpeg_file(tmp_path / "jpeg.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    path = tmp_path / "windowed.dcm"
    ds.save_as(path, enforce_file_format=True)
    got = decode(path, min_side=20)
    want = full_then_area(monkeypatch, path, 20)
    assert (spy[0] is not None) == reduced, spy
    if reduced:
        assert_same_film(got.pixels, want.pixels)
    else:
        np.testing.assert_array_equal(got.pixels, want.pixels)


def test_j2k_under_8_bits_and_htj2k_are_left_to_the_full_path(tmp_path, monkeypatch, spy):
    # Under 8 bits Pillow widens the samples in mode L; HTJ2K's block decoder fails on damage in
    # the levels a reduced decode skips (a damaged file would become a plain row).
    path = j2k_file(tmp_path / "six.dcm", bits=6, rows=400, cols=336)
    got = decode(path, min_side=40)
    np.testing.assert_array_equal(got.pixels, full_then_area(monkeypatch, path, 40).pixels)
    ds = pydicom.dcmread(path)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    assert decode_reduced(frame, HTJ2KLossless, ds, Reduction(40)) is None
    assert spy == [None]


def test_voi_lut_bending_between_any_two_values_goes_to_the_full_path(tmp_path, monkeypatch, spy):
    # Every stored value in the film's range is probed: a narrow band of values sent to white
    # would otherwise show as block means of stored values instead of means of displayed ones.
    from pydicom.sequence import Sequence

    path = j2k_file(tmp_path / "j2k.dcm", bits=12, rows=400, cols=336)
    ds = pydicom.dcmread(path)
    lut = np.arange(4096)
    lut[2001:2004] = 4095
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 12], lut.astype("<u2").tobytes()
    ds.VOILUTSequence = Sequence([item])
    banded = tmp_path / "banded.dcm"
    ds.save_as(banded, enforce_file_format=True)
    got = decode(banded, min_side=40)
    assert spy == [None]
    np.testing.assert_array_equal(got.pixels, full_then_area(monkeypatch, banded, 40).pixels)
