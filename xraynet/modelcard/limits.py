"""The card's ``limits``: what its own figures say the model cannot be trusted
with, in words. Worked out from a card's ``training_data`` and ``validation``
parts: the source confounding of the training data, the sources whose
figures rest on few films, the optimism of the validation films, and how the
recipe transfers to a source it never saw (leave one source out)."""
from __future__ import annotations

from .layout import NOT_A_DEVICE, format_ci


def limits_section(card: dict) -> list[dict]:
    """Known limits, in words, worked out from the card's own figures: the
    source confounding of the training data, how far the within-source and
    pooled figures can be trusted, and what the leave-one-source-out figures
    (or their absence) say. A list of ``{"topic", "text"}``."""
    out = [{"topic": "not a diagnostic device", "text": NOT_A_DEVICE}, _confounding_limit(card)]
    val = card["validation"]
    small = _small_sources_limit(val)
    if small is not None:
        out.append(small)
    out.append({"topic": "optimistic validation",
                "text": "The validation films chose both the epoch and the threshold, so the figures here are "
                        "somewhat optimistic for new films from the same sources."})
    out.append(_unseen_sources_limit(val, card["threshold"]["class"]))
    return out


def _confounding_limit(card: dict) -> dict:
    """Whether the source alone could give a film's class away, from each source's class mix."""
    data, val, classes = card["training_data"], card["validation"], card["classes"]
    sources = data["sources"]
    combined = val["within_source"]["combined"]
    unmeasured = [c for c in classes if (combined.get(c) or {}).get("reason")]
    if not val["within_source"]["available"]:
        return {"topic": "source confounding",
                "text": "The training data names no source for its films, so whether the model recognises "
                        "the collection instead of the disease cannot be measured; treat every figure as "
                        "possibly inflated."}
    # Each source's class mix: where it differs from source to source, the source alone predicts the
    # label, and a network can learn to recognise the collection instead of the disease.
    mixes = []
    for s, e in sources.items():
        n = sum(e["images"]["all"].values())
        if n:
            mixes.append(f"{s}: " + ", ".join(f"{e['images']['all'][c] / n:.0%} {c}" for c in classes))
    text = (f"The sources hold the classes in different proportions ({'; '.join(mixes)}), so a network can "
            "score by recognising where a film comes from instead of the disease. The within-source figures "
            "are the ones such a shortcut cannot earn; the pooled ones mix sources.")
    if unmeasured:
        text += (f" {', '.join(unmeasured)}: no source holds these films beside films of another class, so "
                 "their figures stay confounded by source.")
    return {"topic": "source confounding", "text": text}


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
