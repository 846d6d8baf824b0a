#!/usr/bin/env python3
"""What decoding compressed DICOM frames at reduced size changes, and what it saves.

Real films from DATA (default ../shared/data/cxr; those whose short side is at
least ``--min-side``, a seeded sample of ``--files``) are written into a
temporary folder as monochrome DICOM files -- JPEG 2000 Lossless with 12-bit
stored values (the film's 8 bits times 16 plus its own low bits of noise, as
a detector's output would have) and 8-bit JPEG Baseline (quality 95), both
optionally ``--upscale`` times larger, as films of 2,000-3,000 pixels are --
nothing is written into the project. Each file is then loaded for the bundled
model twice, interleaved:

* the frame decoded at full size by pydicom, then area means down to
  :func:`xraynet.imaging.reduced_side` (what xraynet did before);
* the frame decoded at reduced size where xraynet does so
  (:mod:`xraynet.decoders.dicom.reduced`: JPEG DCT scaling; JPEG 2000
  resolution levels, for at most half of the reduction: a 1,024-px film
  needs 3x, so only ``--upscale`` films show it), then the rest of the area
  means.

Prints per codec: |p_covid(reduced) - p_covid(full)| (max, median, 99th
percentile), how many flags (p_covid >= the model's threshold) change, the
max |difference| of the network input, and the median single-thread load time
per film both ways.

    python benchmarks/dicom_reduced_check.py --files 60
    python benchmarks/dicom_reduced_check.py --files 30 --upscale 3
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _dataset(rows: int, cols: int, bits: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (16 if bits > 8 else 8), bits, bits - 1, 0
    return ds


def write_j2k(path: Path, film: np.ndarray, rng) -> None:
    """``film`` (uint8) as 12-bit JPEG 2000 Lossless DICOM."""
    from pydicom.uid import JPEG2000Lossless

    values = film.astype(np.uint16) * 16 + rng.integers(0, 16, film.shape, dtype=np.uint16)
    ds = _dataset(*film.shape, 12)
    ds.PixelData = values.tobytes()
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def write_jpeg(path: Path, film: np.ndarray) -> None:
    """``film`` (uint8) as JPEG Baseline DICOM (one encapsulated frame, Pillow's encoder)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(film).save(buf, "JPEG", quality=95)
    ds = _dataset(*film.shape, 8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cxr")
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--min-side", type=int, default=1000)
    ap.add_argument("--upscale", type=int, default=1, help="write the films this many times larger (bilinear)")
    args = ap.parse_args(argv)

    import xraynet.decoders.dicom.pixels as pixels
    from screen_bench import large_films  # this folder is on sys.path when the script runs
    from xraynet.backends import get_backend
    from xraynet.imaging import Preprocessing
    from xraynet.modelfile import bundled_model_path, load_model

    get_backend("cpu").set_threads(1)
    loaded = load_model(bundled_model_path())
    prep = Preprocessing.from_dict(loaded.preprocessing)
    covid = loaded.classes.index("covid")
    threshold = float(loaded.metadata["threshold"]["value"])
    reduced_decoder = pixels.decode_reduced
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"j2k": [], "jpeg": []}
        for i, (_, src) in enumerate(large_films(args.data, args.files, args.min_side)):
            with Image.open(src) as im:
                im = im.convert("L")
                if args.upscale > 1:
                    im = im.resize((im.width * args.upscale, im.height * args.upscale), Image.BILINEAR)
                film = np.asarray(im)
            write_j2k(Path(tmp) / f"{i}_j2k.dcm", film, rng)
            write_jpeg(Path(tmp) / f"{i}_jpeg.dcm", film)
            files["j2k"].append(Path(tmp) / f"{i}_j2k.dcm")
            files["jpeg"].append(Path(tmp) / f"{i}_jpeg.dcm")
        for codec, paths in files.items():
            xs = {"full": [], "reduced": []}
            secs = {"full": [], "reduced": []}
            for path in paths:
                for way in ("full", "reduced", "full", "reduced"):  # interleaved; each way's second load kept
                    t0 = time.perf_counter()
                    x = load_with(pixels, reduced_decoder if way == "reduced" else None, path, prep)
                    secs[way].append(time.perf_counter() - t0)
                xs["full"].append(load_with(pixels, None, path, prep))
                xs["reduced"].append(x)
            p = {way: loaded.model.predict_proba(np.stack(v)[:, None])[:, covid] for way, v in xs.items()}
            moved = np.abs(p["reduced"] - p["full"])
            flips = int(((p["reduced"] >= threshold) != (p["full"] >= threshold)).sum())
            dx = max(float(np.abs(a - b).max()) for a, b in zip(xs["full"], xs["reduced"]))
            print(f"{codec}: {len(paths)} films (x{args.upscale}); |dp_covid| max {moved.max():.4f}, median "
                  f"{np.median(moved):.4f}, p99 {np.percentile(moved, 99):.4f}; {flips} flag(s) changed; "
                  f"max |input diff| {dx:.3f}; load ms/film full {statistics.median(secs['full']) * 1e3:.0f}, "
                  f"reduced {statistics.median(secs['reduced']) * 1e3:.0f}")
    return 0


def load_with(pixels, decoder, path, prep):
    """The network input of ``path`` with the reduced DICOM decoder on (``decoder``) or off (None)."""
    from xraynet.imaging import load

    keep = pixels.decode_reduced
    pixels.decode_reduced = decoder if decoder is not None else (lambda *a, **k: None)
    try:
        return load(path, prep)[0]
    finally:
        pixels.decode_reduced = keep


if __name__ == "__main__":
    raise SystemExit(main())
