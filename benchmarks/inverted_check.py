"""How the "likely_inverted" check of xraynet.imaging behaves on real films.

For every film under DATA (default ../shared/data/cxr), the lungs-minus-
mediastinum score of the 64x64 thumbnail, as decode() computes it (stretched
to the thumbnail's own range) and without the stretch, for the film as it is
and inverted. Prints, for each variant, how many real films exceed the margin
(false warnings) and the share of inverted films that do (caught negatives).

    python benchmarks/inverted_check.py [DATA]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from xraynet import imagechecks, imaging
from xraynet.discovery import find_images
from xraynet.errors import ImageError


def _score(a: np.ndarray) -> float:
    return float((a[19:45, 10:22].mean() + a[19:45, 42:54].mean()) / 2 - a[19:45, 26:38].mean())


def main(data: Path) -> None:
    scores = []
    for _, path in find_images(data).files:
        try:
            pixels = imaging.decode(path).pixels
        except ImageError:
            continue
        a = np.asarray(Image.fromarray(imagechecks._block_mean(pixels)).resize((64, 64), imaging._RESAMPLE))
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            continue
        s = (a - lo) / (hi - lo)
        scores.append((_score(a), _score(1.0 - a), _score(s), _score(1.0 - s)))
    r = np.array(scores)
    margin = imaging.INVERTED_MARGIN
    print(f"{len(r)} films under {data}, margin {margin}")
    for name, col in (("without stretch", 0), ("stretched (decode)", 2)):
        print(f"  {name:20s} median {np.median(r[:, col]):+.3f}  real films over the margin "
              f"{int((r[:, col] > margin).sum())}  inverted films caught {(r[:, col + 1] > margin).mean():.1%}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr")
