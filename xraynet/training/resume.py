"""What a resumed run may take from the command line, and what it must keep.

A checkpoint resumes the run that wrote it: the same films, the same split,
the same recipe. :func:`stored_options` reads the options a checkpoint holds
(without building the network), so a command line can start from them and
replace only what it was given. :func:`merge_options` then holds the options
a run asks for against the checkpoint's: those that only say how long the run
goes on, where it computes or how the final threshold is chosen
(:data:`CHANGEABLE`) are taken, each difference said in a note; any other
difference (architecture, image size, learning rate, seed, augmentation, ...)
would make the rest of the run another run, and is refused naming both
values. :func:`check_same_data` refuses a data folder whose classes or films
are not those the checkpoint trained on.
"""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from ..errors import CheckpointError, TrainingError
from .options import TrainOptions
from .state import options_of

#: Options a resumed run may change, with what changing each does.
CHANGEABLE = {
    "epochs": "the run now ends after epoch {new} instead of {old} (at once, keeping the epochs done, where the "
              "checkpoint is past it)",
    "patience": "early stopping now waits {new} epoch(s) without a better model instead of {old}",
    "device": "the rest of the run computes on the {new} (the epochs before on the {old}); the GPU and the CPU "
              "round differently, so the weights are not bit for bit those of an uninterrupted run",
    "workers": "{new} decoding threads instead of {old} (the weights do not change)",
    "cache": "the decode cache is {new} instead of {old} (the weights do not change)",
    "screening_class": "the threshold at the end is chosen for class {new} instead of {old} (the weights do not "
                       "change)",
    "target_sensitivity": "the threshold at the end is chosen for validation sensitivity {new} instead of {old} "
                          "(the weights do not change)",
}


def option_flag(name: str) -> str:
    """The command-line spelling of TrainOptions field ``name`` (``--image-size``)."""
    return "--" + name.replace("_", "-")


def stored_options(path) -> TrainOptions:
    """The options stored in checkpoint ``path``, read from its header only (no weights).
    Raises ModelFileError for an unreadable file, CheckpointError for a model without
    training state or with options this version cannot use."""
    from ..modelfile import read_info

    return options_of(path, read_info(path)["metadata"])


def resume_options(path, given: dict) -> TrainOptions:
    """The options of a run resuming checkpoint ``path``: the stored ones, with the fields
    of ``given`` (field name -> value, what the command line was given) put in their place.
    Nothing is refused here; :func:`merge_options` does that when the run starts."""
    stored = stored_options(path)
    try:
        return replace(stored, **given)
    except TypeError as e:
        raise TrainingError(f"resume: unknown option ({e}). Expected TrainOptions fields, got "
                            f"{sorted(given)}. Pass TrainOptions field names.") from None


def _same(name: str, old: TrainOptions, new: TrainOptions, spec: dict | None, n_classes: int) -> bool:
    a, b = getattr(old, name), getattr(new, name)
    if a == b:
        return True
    if name == "image_size":   # None means the architecture's own size: compare what is built
        return old.input_size() == new.input_size()
    if name == "arch" and spec is not None:   # the same network named another way (a spec file's path)
        from ..archs import resolve_arch
        from ..errors import XraynetError

        try:
            return resolve_arch(new.arch, num_classes=n_classes, image_size=new.input_size()) == spec
        except XraynetError:
            return False
    if name == "holdout_sources":
        return sorted(a or []) == sorted(b or [])
    return False


def _change_note(name: str, old, new, ran_on: str | None) -> str | None:
    """The note for changeable option ``name`` going from ``old`` to ``new``, or None when
    nothing changes (``device``: the device the checkpoint's epochs ran on, ``ran_on``,
    against the one ``new`` resolves to)."""
    if name == "device":
        from ..devices import resolve_device

        old, new_name = ran_on or old, new
        new = resolve_device(new)
        if old == new:
            return None
        return f"--device {new_name}: {CHANGEABLE[name].format(new=new.upper(), old=str(old).upper())}."
    if old == new:
        return None
    shown = {k: "the default" if v is None else v for k, v in (("old", old), ("new", new))}
    return f"{option_flag(name)} {new}: {CHANGEABLE[name].format(**shown)}."


def merge_options(path, stored: TrainOptions, asked: TrainOptions | None, spec: dict | None = None,
                  n_classes: int = 0, ran_on: str | None = None) -> tuple[TrainOptions, list[str]]:
    """The options the resumed run goes on with, and a note per change it takes.

    ``stored``: the checkpoint's options; ``asked``: those of this run (None: the stored
    ones). A field of :data:`CHANGEABLE` takes ``asked``'s value, with a note when it
    differs (the device: when it resolves to another than ``ran_on``, the checkpoint's
    "cpu" or "gpu"); any other field must be equal (``image_size`` as the size built,
    ``arch`` as the network ``spec`` it gives for ``n_classes``), else CheckpointError
    naming the option, the checkpoint's value and the asked one."""
    if asked is None:
        return stored, []
    clashes, notes, merged = [], [], {}
    for f in fields(TrainOptions):
        old, new = getattr(stored, f.name), getattr(asked, f.name)
        if f.name in CHANGEABLE:
            merged[f.name] = new
            note = _change_note(f.name, old, new, ran_on)
            if note:
                notes.append(note)
        elif not _same(f.name, stored, asked, spec, n_classes):
            clashes.append(f"{option_flag(f.name)} {new!r} (the checkpoint's: {old!r})")
    if clashes:
        raise CheckpointError(f"{path}: this run asks for other options than the run it resumes: "
                              f"{'; '.join(clashes)}. Expected the options the run started with, got others "
                              "that cannot change mid-run. Leave them out to take the checkpoint's, or train "
                              "from the start without --resume.")
    if stored.lr_schedule == "cosine" and stored.epochs != asked.epochs:
        notes.append("--lr-schedule cosine: the learning rate of the epochs still to come follows the new "
                     "--epochs, so the weights differ from those of the run as first planned.")
    return replace(stored, **merged), notes


def check_same_data(path, metadata: dict, classes: list, ds) -> list[str]:
    """Refuse data that is not the data checkpoint ``path`` trained on (``metadata``: the
    checkpoint's, ``classes``: its class names; ``ds``: this run's scan, sources held out
    already). CheckpointError naming the checkpoint's folder and what differs: the class
    folders, or the films (any added, removed, renamed or given another patient changes
    the split). Returns a note when the same films sit in another folder."""
    from ..data import split_fingerprint

    root = (metadata.get("data") or {}).get("root", "?")
    here = str(Path(ds.root).resolve())
    todo = (f"Resume on {root}, or train on {ds.root} from the start without --resume (a new --out, or "
            "delete the checkpoint)")
    if list(ds.classes) != list(classes):
        raise CheckpointError(f"{ds.root}: not the data the checkpoint {path} trained on ({root}). Expected the "
                              f"class folders {list(classes)}, got {list(ds.classes)}. {todo}.")
    stored = (metadata.get("split") or {}).get("files_sha256")
    n_then = (metadata.get("data") or {}).get("images")
    if stored is not None and stored != split_fingerprint(ds):
        raise CheckpointError(f"{ds.root}: not the films the checkpoint {path} trained on ({root}). Expected the "
                              f"{n_then} films the run started with, got {len(ds.items)} films that differ (added, "
                              f"removed, renamed or given another patient). {todo}.")
    if stored is None and root != here:
        raise CheckpointError(f"{ds.root}: not the folder the checkpoint {path} trained on. Expected {root}, got "
                              f"{here}. {todo}.")
    if root != here:
        return [f"{ds.root}: the checkpoint trained on {root}; this folder holds the same films, so the run "
                "goes on here."]
    return []


def carry_best_model(resume, out: Path, best_epoch: int) -> str | None:
    """Before a resumed run writing to ``out``: the best model of the epochs before it. It is
    the model file the checkpoint's run wrote beside ``resume`` (``NAME.h5`` for
    ``NAME.checkpoint.h5``), copied to ``out`` (atomically, over
    whatever ``out`` held: another run's model would be taken for this one's best); the run's
    end reads it back to choose the threshold. Returns a note saying so, or None when nothing
    was to do (no best epoch yet, or ``out`` is that file).
    Raises CheckpointError when the file is not there."""
    import shutil

    from ..atomic import durable_path

    resume = Path(resume)
    beside = resume.with_name(resume.name[:-len(".checkpoint.h5")] + ".h5") \
        if resume.name.endswith(".checkpoint.h5") else None
    if best_epoch <= 0 or (beside is not None and beside.resolve() == out.resolve()):
        return None
    if beside is None or not beside.is_file():
        raise CheckpointError(f"{resume}: the best model of its epochs (epoch {best_epoch}) is not beside it"
                              f"{f' ({beside})' if beside else ''}. Expected the model file its run wrote, got "
                              f"none. Resume with --out naming that model file, or train without --resume.")
    with durable_path(out) as tmp:
        shutil.copyfile(beside, tmp)
    return f"--out {out}: the best model so far (epoch {best_epoch}) is copied there from {beside}."
