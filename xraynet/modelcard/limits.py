"""The card's ``limits``: what its own figures say the model cannot be trusted
with, in words. Worked out from a card's ``training_data`` and ``validation``
parts: the source confounding of the training data, the sources whose
figures rest on few films, the optimism of the validation films, and how the
recipe transfers to a source it never saw (leave one source out)."""
from __future__ import annotations

from .layout import NOT_A_DEVICE, format_ci

#: The card says the sources hold the classes in different proportions when some class's share of
#: the films differs by more than this between two sources (10 percentage points); below it the
#: source alone tells little of the class.
MIX_GAP = 0.10


def limits_section(card: dict) -> list[dict]:
    """Known limits, in words, worked out from the card's own figures: the
    source confounding of the training data, how far the within-source and
    pooled figures can be trusted, and what the leave-one-source-out figures
    (or their absence) say. A list of ``{"topic", "text"}``."""
    out = [{"topic": "not a diagnostic device", "text": NOT_A_DEVICE}, confounding_limit(card)]
    val = card["validation"]
    small = _small_sources_limit(val)
    if small is not None:
        out.append(small)
    out.append({"topic": "optimistic validation",
                "text": "The validation films chose both the epoch and the threshold, so the figures here are "
                        "somewhat optimistic for new films from the same sources."})
    out.append(_unseen_sources_limit(val, card["threshold"]["class"]))
    return out


def confounding_limit(card: dict) -> dict:
    """The ``{"topic": "source confounding", "text"}`` limit: whether the source alone could give a
    film's class away, from each source's class mix in the card's ``training_data`` (the rule of
    :func:`class_mix_gap`)."""
    data, val, classes = card["training_data"], card["validation"], card["classes"]
    sources = data["sources"]
    combined = val["within_source"]["combined"]
    unmeasured = [c for c in classes if (combined.get(c) or {}).get("reason")]
    if not val["within_source"]["available"]:
        return {"topic": "source confounding",
                "text": "The training data names no source for its films, so whether the model recognises "
                        "the collection instead of the disease cannot be measured; treat every figure as "
                        "possibly inflated."}
    text = _mix_text(sources, classes)
    if unmeasured:
        text += (f" {', '.join(unmeasured)}: no source holds these films beside films of another class, so "
                 "their figures stay confounded by source.")
    return {"topic": "source confounding", "text": text}


def class_mix_gap(sources: dict, classes) -> tuple[float, str | None]:
    """The largest difference between two sources in the share of one class among their films
    (``training_data["sources"]``, images of train and validation together), and that class:
    ``(0.0, None)`` with fewer than two sources holding films. The rule of the card's "source
    confounding" limit: the proportions differ when the gap exceeds :data:`MIX_GAP`."""
    totals = {s: sum(e["images"]["all"].values()) for s, e in sources.items()}
    shares = [{c: e["images"]["all"].get(c, 0) / totals[s] for c in classes}
              for s, e in sources.items() if totals[s]]
    if len(shares) < 2:
        return 0.0, None
    gaps = {c: max(m[c] for m in shares) - min(m[c] for m in shares) for c in classes}
    worst = max(classes, key=lambda c: gaps[c])
    return gaps[worst], worst


def _mix_text(sources: dict, classes) -> str:
    """The confounding limit's words from each source's class mix (:func:`class_mix_gap`)."""
    mixes = []
    for s, e in sources.items():
        n = sum(e["images"]["all"].values())
        if n:
            mixes.append(f"{s}: " + ", ".join(f"{e['images']['all'].get(c, 0) / n:.0%} {c}" for c in classes))
    gap, cls = class_mix_gap(sources, classes)
    if cls is None:
        return (f"Every film comes from one source ({'; '.join(mixes) or 'none'}), so the source cannot give a "
                "film's class away here; but nothing shows how the model does on films from another hospital "
                "or collection, whose look it never saw.")
    if gap > MIX_GAP:
        # Where the class mix differs from source to source, the source alone predicts the label, and
        # a network can learn to recognise the collection instead of the disease.
        return (f"The sources hold the classes in different proportions ({'; '.join(mixes)}; the share of "
                f"{cls} differs by {gap * 100:.0f} percentage points between sources), so a network can score "
                "by recognising where a film comes from instead of the disease. The within-source figures are "
                "the ones such a shortcut cannot earn; the pooled ones mix sources.")
    return (f"The sources hold the classes in similar proportions ({'; '.join(mixes)}; no class's share differs "
            f"by more than {MIX_GAP * 100:.0f} percentage points between sources), so the source alone gives "
            "little of a film's class away. A network can still pick up source cues; the within-source figures "
            "are the ones they cannot inflate.")


def _small_sources_limit(val: dict) -> dict | None:
    """The within-source AUCs whose 95% interval is wider than 0.3, or None when there are none."""
    small = []
    for s, e in val["within_source"]["sources"].items():
        for c, a in e["auc"].items():
            if a["value"] is not None and a["ci"][0] is not None and a["ci"][1] - a["ci"][0] > 0.3:
                small.append(f"{s} {c} {format_ci(a['value'], a['ci'])} on {e['films']} films")
    if not small:
        return None
    return {"topic": "small sources",
            "text": "Some within-source figures rest on few films and say little: " + "; ".join(small) + "."}


def _unseen_sources_limit(val: dict, k: str) -> dict:
    """What leave one source out says about a site like none of the training sources (screening class
    ``k``), or that it was not measured."""
    loso = val.get("leave_one_source_out")
    if not loso:
        return {"topic": "unseen sources",
                "text": "No leave-one-source-out figures in this card: how the recipe transfers to a source "
                        "it never saw is unmeasured. Run `xraynet crossval DATA --recipe MODEL --out-dir cv/` "
                        "to estimate it."}
    parts = [_fold_text(f, k) for f in loso["folds"]]
    best = [e["auc"][k]["value"] for e in val["within_source"]["sources"].values()
            if k in e["auc"] and e["auc"][k]["value"] is not None]
    held_k = [f["auc"][k]["value"] for f in loso["folds"] if f["status"] == "ok" and k in f["auc"]
              and f["auc"][k]["value"] is not None]
    verdict = ""
    if best and held_k:
        verdict = (f" The best held-out {k} AUC, {max(held_k):.3f}, is "
                   + ("far " if max(best) - max(held_k) > 0.1 else "")
                   + f"below the best within-source validation figure, {max(best):.3f}: at a site whose "
                     "films look like none of the training sources, expect figures nearer the held-out ones.")
    return {"topic": "unseen sources",
            "text": "Leave one source out (the same recipe retrained with each source left out of "
                    "training and validation, then scored on that source alone): " + "; ".join(parts)
                    + "." + verdict}


def _fold_text(f: dict, k: str) -> str:
    """One leave-one-source-out fold in words: its AUCs and the screening figures at its threshold."""
    if f["status"] != "ok":
        return f"{f['held_out']}: not possible ({f['reason']})"
    aucs = ", ".join(f"{c} AUC {format_ci(a['value'], a['ci'])}" for c, a in f["auc"].items()
                     if a["value"] is not None)
    scr = f.get("screening") or {}
    sens = (scr.get("sensitivity") or {}).get("value")
    spec = (scr.get("specificity") or {}).get("value")
    at = (f"; {k} sensitivity {'-' if sens is None else f'{sens:.2f}'} / specificity "
          f"{'-' if spec is None else f'{spec:.2f}'} at the fold's threshold" if scr else "")
    return f"held-out {f['held_out']} ({f['films']:,} films): {aucs}{at}"
