"""DICOM files: recognised by their content, declared sizes checked before any
pixel is decoded, pixels decoded by pydicom and its codec plugins, then the
DICOM grayscale display pipeline.

See :func:`xraynet.imaging.decode` for what comes out and :func:`decode_dicom`
for the rules applied, each with its source in the DICOM standard (PS3.x).

Modules, in the order a file goes through them: :mod:`.detect` tells DICOM by
its content; :mod:`.read` reads the dataset (deflate bombs refused, pydicom's
failures told apart); :mod:`.pixels` checks and decodes the first frame, with
:mod:`.codestream` reading the sizes a compressed frame declares;
:mod:`.display` is the grayscale pipeline; :mod:`.header` the header gates
(not frontal, not a radiograph, not chest, for processing).
"""
from __future__ import annotations

from ..codestream import declared_sizes
from .detect import looks_like_dicom, raw_encoding
from .display import displays_inverted
from .header import header_warnings
from .read import decode_dicom

__all__ = ["decode_dicom", "declared_sizes", "displays_inverted", "header_warnings", "looks_like_dicom",
           "raw_encoding"]
