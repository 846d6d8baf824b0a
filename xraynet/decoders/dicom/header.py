"""Header gates: the warning codes for a DICOM dataset whose header says it
is not a frontal chest radiograph for presentation (:func:`header_warnings`),
each value with its source in the DICOM standard."""
from __future__ import annotations

import re

# View Position (0018,5101), PS3.3 C.8.11.5 (DX Positioning) and C.8.1.1 (CR
# Series): AP and PA are the frontal projections; LL, RL, LAT(ERAL), the
# obliques (RLO, LLO...) and the lateral decubitus views (RLD, LLD, frontal
# beam on a patient lying on the side, so the film is turned 90 degrees) are not.
# Vendors write "AP SUPINE", "PA_ERECT": the first word decides.
_FRONTAL_VIEWS = frozenset({"AP", "PA"})
# Modality (0008,0060), PS3.3 C.7.3.1.1.1: CR, DX and RG (film) are projection
# radiography; DF (retired digital fluoroscopy) and DR (not a defined term, but
# written by digital radiography devices) count too. OT ("other") says nothing
# either way, and Secondary Capture copies of films carry it, so it gives no
# warning; every other value (CT, MR, US, NM, PT, MG, XA, RF, PX, IO...) names a
# different technique or target.
_RADIOGRAPHY = frozenset({"CR", "DX", "RG", "DF", "DR", "OT"})
# Body Part Examined (0018,0015), PS3.3 C.7.3.1, defined terms in PS3.16 Annex L:
# CHEST (also CHESTABDOMEN, CHEST_TO_PELVIS...: words starting CHEST), THORAX;
# LUNG(S) and the Spanish/Portuguese TORAX seen in the field.
_CHEST_WORDS = frozenset({"THORAX", "TORAX", "LUNG", "LUNGS"})
# Presentation Intent Type (0008,0068), PS3.3 C.8.11.1; the "For Processing" SOP
# classes (PS3.4 B.5) of DX, mammography and intra-oral imaging say the same.
_FOR_PROCESSING_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1",
                                         "1.2.840.10008.5.1.4.1.1.1.3.1"})



def element_text(ds, keyword: str) -> str:
    """An element's (first) value, stripped and upper case; "" when absent or unreadable."""
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 -- pydicom converts lazily and raises on a corrupt value
        return ""
    if value is None or isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if value else ""
    return str(value).strip().upper()


def header_warnings(ds) -> list[str]:
    """Warning codes (keys of :data:`xraynet.imaging.WARNING_CODES`) for a dataset whose
    header says it is not a frontal chest radiograph for presentation: ``not_frontal``,
    ``not_radiograph``, ``not_chest``, ``for_processing``, in that order. A missing or
    empty tag gives no warning. The values that count as frontal, radiograph and chest,
    and their sources, are the module constants above."""
    out = []
    view = element_text(ds, "ViewPosition")
    words = re.split(r"[^A-Z0-9]+", view)
    if view and words[0] not in _FRONTAL_VIEWS:
        out.append("not_frontal")
    elif not view:
        # No View Position: the coded view (0054,0220) of the DX Positioning Module.
        try:
            meaning = str(ds.ViewCodeSequence[0].get("CodeMeaning", "")) if ds.get("ViewCodeSequence") else ""
        except Exception:  # noqa: BLE001 -- a corrupt optional sequence gives no gate
            meaning = ""
        if re.search(r"lateral|oblique|decubitus", meaning, re.IGNORECASE):
            out.append("not_frontal")
    modality = element_text(ds, "Modality")
    if modality and modality not in _RADIOGRAPHY:
        out.append("not_radiograph")
    part = element_text(ds, "BodyPartExamined")
    if part and not any(w.startswith("CHEST") or w in _CHEST_WORDS for w in re.split(r"[^A-Z]+", part)):
        out.append("not_chest")
    if (element_text(ds, "PresentationIntentType") == "FOR PROCESSING"
            or element_text(ds, "SOPClassUID") in _FOR_PROCESSING_SOP_CLASSES):
        out.append("for_processing")
    return out
