"""The readable text of a model card, as ``xraynet info MODEL`` prints it
(:func:`format_card`, from :func:`xraynet.modelcard.info_document`): one
function per part, in the order the text shows them."""
from __future__ import annotations

from ..errors import ModelFileError
from .layout import SIDES, format_ci, threshold_text


def format_card(doc: dict) -> str:
    """The readable text of :func:`info_document`: identity, intended use,
    validation (within one source first, then pooled, then leave one source
    out), threshold, training data and split, preprocessing, training, limits,
    provenance. ModelFileError when a card passed :func:`check_card` but lacks
    a part the text needs (a card edited by hand or damaged)."""
    try:
        return _format(doc)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ModelFileError(f"{doc.get('path')}: the model card is malformed ({type(e).__name__}: {e}). Expected "
                             f"the layout of card_version {doc.get('card_version')} (xraynet.modelcard), got a card "
                             "without that part. Write the card again (train again, or rerun the script that "
                             "wrote it); `xraynet info MODEL --json` shows it as stored.") from None


def _rate_text(r) -> str:
    """A RATE as ``0.921 (0.895-0.940)``; ``-`` when undefined."""
    return "-" if not r or r["value"] is None else format_ci(r["value"], r["ci"])


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns, two spaces apart, header first."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: indent + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header)] + [line(r) for r in rows]


def _format(doc: dict) -> str:
    """The text of :func:`format_card`, which turns a missing part into ModelFileError."""
    k = (doc.get("threshold") or {}).get("class")
    lines = _identity_lines(doc, k)
    if not doc["card_present"]:
        return "\n".join(lines + _cardless_lines(doc)) + "\n"
    classes = doc["classes"]
    order = ([k] if k in classes else []) + [c for c in classes if c != k]  # the screening class first
    lines += _intended_use_lines(doc["intended_use"])
    lines += _validation_lines(doc, order, k)
    lines += _threshold_lines(doc["threshold"])
    lines += _training_data_lines(doc)
    lines += ["", "Preprocessing: " + "; ".join(doc["preprocessing"]["steps"])]
    lines += _training_lines(doc["training"])
    lines += ["", "Limits"] + [f"  - {x['topic']}: {x['text']}" for x in doc["limits"]]
    if doc.get("provenance"):
        lines += ["", "Where the numbers come from"] + [f"  {key}: {value}" for key, value in doc["provenance"].items()]
    return "\n".join(lines) + "\n"


def _identity_lines(doc: dict, k: str | None) -> list[str]:
    """The model file, its checksum, versions, architecture, classes and the notes of info_document."""
    arch = doc["architecture"]
    shape = "x".join(str(d) for d in arch["input_shape"] or [])
    head = f"Model card: {doc['model_file']}"
    lines = [head + (f" (card version {doc['card_version']})" if doc["card_present"] else " (model card missing)"),
             f"  weights_sha256  {doc['weights_sha256']}",
             f"  xraynet         {doc['xraynet_version']}" + (f", card written {doc.get('written_utc')}"
                                                              if doc.get("written_utc") else ""),
             f"  architecture    {arch['name']}, input {shape}, {arch['num_parameters']:,} parameters",
             f"  classes         {', '.join(doc['classes'])}" + (f" (screening class: {k})" if k else "")]
    return lines + [f"  note: {note}" for note in doc["notes"]]


def _cardless_lines(doc: dict) -> list[str]:
    """What a file without a card holds: threshold, training basics, preprocessing."""
    lines = []
    thr = doc.get("threshold")
    if thr:
        lines.append(f"  threshold       {thr['class']} >= {threshold_text(thr['value'])} (target sensitivity "
                     f"{thr['target_sensitivity']}, chosen on {thr.get('chosen_on')})")
    tr = doc.get("training")
    if tr:
        lines.append(f"  training        {tr['epochs_run']} epochs, best epoch {tr['best_epoch']}, device "
                     f"{tr['device']}")
    lines.append(f"  preprocessing   {'; '.join(doc['preprocessing']['steps'])}")
    return lines


def _intended_use_lines(iu: dict) -> list[str]:
    """What the model is for, not for, and what to do before use."""
    return ["", "Intended use", f"  {iu['summary']}", f"  Not for: {'; '.join(iu['not_for'])}.",
            f"  {iu['before_use']}"]


def _validation_lines(doc: dict, order: list[str], k: str | None) -> list[str]:
    """Within one source first, then pooled, then leave one source out; classes in ``order``."""
    val = doc["validation"]
    boot = val["bootstrap"]
    lines = ["", f"Validation: {val['subset']}; 95% intervals from {boot['n_boot']:,} stratified bootstrap "
                 f"resamples (seed {boot['seed']})"]
    ws = val["within_source"]
    lines.append(f"  Within one source ({ws['note']}):")
    if not ws["available"]:
        lines.append(f"    unavailable: {ws['reason']}")
    else:
        desc = (doc.get("training_data") or {}).get("source_descriptions") or {}
        lines += _within_table(ws, desc, order)
    p = val["pooled"]
    lines.append(f"  Pooled over all sources ({p['note']}):")
    lines.append(f"    accuracy {_rate_text(p['accuracy'])}; "
                 + "; ".join(f"AUC {c} {format_ci(p['auc'][c]['value'], p['auc'][c]['ci'])}" for c in order))
    loso = val.get("leave_one_source_out")
    if loso:
        lines.append("  Leave one source out (the recipe retrained without each source, scored on that source "
                     "alone; the estimate for a site it never saw):")
        lines += _loso_table(loso, order, k)
    return lines


def _within_table(ws: dict, desc: dict, order: list[str]) -> list[str]:
    """Per source (most films first) and for the same-source pairs of all sources, the AUC of each class."""
    rows = []
    for name, s in sorted(ws["sources"].items(), key=lambda kv: -kv[1]["films"]):
        label = name + (f" ({desc[name]})" if name in desc else "")
        rows.append([label, f"{s['films']:,}"] + [format_ci(s["auc"][c]["value"], s["auc"][c]["ci"]) for c in order])
    comb = ws["combined"]
    rows.append(["same-source pairs of all sources", ""]
                + [format_ci(comb[c]["value"], comb[c]["ci"]) for c in order])
    return _table(["source", "films"] + [f"AUC {c}" for c in order], rows, indent="    ")


def _loso_table(loso: dict, order: list[str], k: str | None) -> list[str]:
    """One row per held-out source: films, what it trained on, AUCs, sensitivity / specificity."""
    rows = []
    for f in loso["folds"]:
        trained = "-" if f.get("train_images") is None else f"{f['train_images']:,} (+{f['val_images']:,} val)"
        if f["status"] != "ok":
            rows.append([f["held_out"], f"{f['films']:,}", trained] + ["-"] * len(order)
                        + [f"not possible: {f['reason']}"])
            continue
        scr = f.get("screening") or {}
        sens = (scr.get("sensitivity") or {}).get("value")
        spec = (scr.get("specificity") or {}).get("value")
        rows.append([f["held_out"], f"{f['films']:,}", trained]
                    + [format_ci(f["auc"][c]["value"], f["auc"][c]["ci"]) for c in order]
                    + [f"{'-' if sens is None else f'{sens:.2f}'} / {'-' if spec is None else f'{spec:.2f}'}"])
    return _table(["held out", "films", "trained on"] + [f"AUC {c}" for c in order]
                  + [f"{k} sens / spec at the fold's threshold"], rows, indent="    ")


def _threshold_lines(thr: dict) -> list[str]:
    """The threshold and its rule; what it gave where it was chosen, per source and pooled."""
    at = thr["at_choice"]
    lines = ["", "Threshold", f"  {thr['class']} >= {threshold_text(thr['value'])}: {thr['rule']}.",
             f"  On the films that chose it: sensitivity {_rate_text(at['sensitivity'])}, specificity "
             f"{_rate_text(at['specificity'])}"]
    for name, r in thr["by_source"].items():
        lines.append(f"  {name}: sensitivity {_rate_text(r['sensitivity'])}, "
                     f"specificity {_rate_text(r['specificity'])}")
    lines.append(f"  Pooled ({thr['pooled']['note']}): sensitivity {_rate_text(thr['pooled']['sensitivity'])}, "
                 f"specificity {_rate_text(thr['pooled']['specificity'])}")
    return lines


def _training_data_lines(doc: dict) -> list[str]:
    """Images/patients per source, split side and class; the data's warnings; the split rule."""
    data, classes = doc["training_data"], doc["classes"]
    lines = ["", f"Training data: {data['root']}: {data['images']:,} images ({data['skipped']} skipped), "
                 f"{data['patients']:,} patients, {len(data['sources'])} source(s)"
                 + (f"; sources left out: {', '.join(data['excluded_sources'])}" if data["excluded_sources"] else "")]
    rows = []
    for name, e in data["sources"].items():
        for side in SIDES:
            rows.append([name if side == "train" else "", side]
                        + [f"{e['images'][side][c]}/{e['patients'][side][c]}" for c in classes])
    for side in SIDES:
        rows.append(["all sources" if side == "train" else "", side]
                    + [f"{data['per_class']['images'][side][c]}/{data['per_class']['patients'][side][c]}"
                       for c in classes])
    lines += _table(["source", "split"] + [f"{c} images/patients" for c in classes], rows)
    lines += [f"  warning: {w}" for w in data["warnings"]]
    sp = doc["split"]
    lines.append(f"  Split {sp['rule']}: train {sp['images']['train']:,} images / {sp['patients']['train']:,} "
                 f"{sp['level']}s, validation {sp['images']['val']:,} / {sp['patients']['val']:,}; "
                 f"{sp['patient_overlap']} patients on both sides")
    return lines


def _training_lines(tr: dict) -> list[str]:
    """Epochs, the best one, the device and machine, the clock, the recipe."""
    es = tr["epoch_seconds"]
    m = tr.get("machine") or {}
    where = ", ".join(str(x) for x in (m.get("description"), m.get("cpu"),
                                       m.get("cpu_count") and f"{m['cpu_count']} cores", m.get("gpu")) if x)
    lines = ["", f"Training: {tr['epochs_run']} epochs, best epoch {tr['best_epoch']} by validation "
                 f"{tr['selected_by']}; device {tr['device']}" + (f" ({where})" if where else "")]
    if es["total"]:
        lines.append(f"  {es['total']:,.0f} s in epochs (median {es['median']:.0f} s, {es['min']:.0f}-"
                     f"{es['max']:.0f})" + (f"; {tr['wall_seconds']:,.0f} s wall for the last run"
                                            if tr.get("wall_seconds") else "")
                     + ("; resumed" if tr.get("resumed") else "") + f"; finished {tr['finished_utc']}")
    if tr.get("note"):
        lines.append(f"  {tr['note']}")
    lines.append("  recipe: " + ", ".join(f"{key}={value}" for key, value in tr["recipe"].items()))
    return lines
