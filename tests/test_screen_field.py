"""Field cases of the nightly cron run: special files (FIFO, socket, device) that must never be opened,
one discovery for screening and training, folders that cannot be listed (old rows kept, exit 5), names
that differ only by undecodable bytes (report paths reversible and unique), outputs that cannot be
written (read-only folder, full disk: exit 4, nothing durable lost) and unwrapped non-terminal output.

Tests run as root, where chmod stops nothing: unreadable folders, read-only folders and full disks are
simulated by patching ``os`` functions to raise the OSError the kernel would."""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
import re
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from xraynet import discovery, screening as screen_mod
from xraynet.cli.main import app
from xraynet.data import scan_dataset
from xraynet.decodecache import file_sha256
from xraynet.discovery import decode_path, encode_path, find_images
from xraynet.errors import DataError, ReportWriteError, ScreenError
from xraynet.discovery import IMAGE_SUFFIXES
from xraynet.screening import path_of_cell, screen
from xraynet.screening import run as screen_run
from xraynet.screening.report import cell as report_cell

from helpers import check_whole_report as _check_whole
from helpers import random_png as _png

runner = CliRunner()


# ---------------------------------------------------------------- helpers
def _within(seconds: float, fn, fifos=()):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned in time."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- re-raised on the test's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for f in fifos:  # release a reader blocked in open() so the thread can end
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"still running after {seconds} s: something opened a FIFO")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _dicom(path: Path, seed: int = 0) -> Path:
    """A small valid DICOM file with the DICM marker, whatever its name."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    arr = np.random.default_rng(seed).integers(0, 4096, (40, 48), dtype=np.uint16)
    set_pixel_data(ds, arr, "MONOCHROME2", 12)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _rows(report: Path) -> dict[str, dict]:
    return {r["path"]: r for r in _check_whole(report)}


def _cmd(folder, report, model_file, *extra):
    return ["screen", str(folder), "--out", str(report), "--model", str(model_file), "--workers", "1", *extra]


def _one_error_line(res, *needles):
    """The CLI said what happened in one unwrapped line on stderr, with no traceback."""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _fd_path(fd) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _fail(monkeypatch, name: str, when, err: int = errno.ENOSPC, skip: int = 0):
    """Make ``os.<name>`` raise OSError(err) for calls where ``when(*args)`` holds (after ``skip`` of them)."""
    real = getattr(os, name)
    seen = {"n": 0}

    def fake(*args, **kwargs):
        if when(*args):
            seen["n"] += 1
            if seen["n"] > skip:
                raise OSError(err, os.strerror(err), str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fake)
    return seen


def _deny_listing(monkeypatch, *paths):
    """os.scandir of these folders fails as for a folder without read permission."""
    real = os.scandir
    deny = {os.fspath(p) for p in paths}

    def fake(path="."):
        if os.fspath(path) in deny:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", fake)


# ---------------------------------------------------------------- one discovery, special files
def _special_files(folder: Path) -> list[Path]:
    """FIFOs named like images (and one with no extension, which would be checked by content), a
    socket and, where the container allows it, a character device. Returns the FIFOs."""
    folder.mkdir(parents=True, exist_ok=True)
    fifos = [folder / "fifo.png", folder / "IM0002", folder / "sub" / "1.2.840.5"]
    for f in fifos:
        f.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(f)
    here = os.getcwd()
    os.chdir(folder)  # AF_UNIX paths are limited to ~108 bytes: bind a relative name
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind("sock.png")
    finally:
        os.chdir(here)
    try:
        os.mknod(folder / "dev.dcm", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        pass  # no CAP_MKNOD in this container: the FIFOs and the socket still cover the rule
    return fifos


def test_special_files_are_never_opened_and_never_listed(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    fifos = _special_files(folder)
    _png(folder / "ok.png", 0)
    opened = []
    real = discovery.is_dicom_file
    monkeypatch.setattr(discovery, "is_dicom_file", lambda p: opened.append(os.fspath(p)) or real(p))
    listing = _within(30, lambda: find_images(folder), fifos)
    assert [k for k, _ in listing.files] == ["ok.png"] and not listing.unlisted
    assert listing.others >= 4  # 3 FIFOs + the socket (+ the device)
    assert opened == []         # ok.png counts by its ending; nothing else is a regular file


def test_screen_cli_with_fifos_does_not_hang(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    fifos = _special_files(folder)
    _png(folder / "a.png", 1)
    res = _within(120, lambda: runner.invoke(app, _cmd(folder, report, model_file)), fifos)
    assert res.exit_code == 0, res.output
    assert list(_rows(report)) == ["a.png"]


def test_training_and_evaluation_folders_with_fifos_do_not_hang(tmp_path, model_file):
    root = tmp_path / "data"
    fifos = _special_files(root / "covid")
    for i in range(2):
        _png(root / "covid" / f"c{i}.png", i)
        _png(root / "normal" / f"n{i}.png", 10 + i)
    os.mkfifo(root / "normal" / "x.jpg")
    fifos.append(root / "normal" / "x.jpg")
    ds = _within(30, lambda: scan_dataset(root), fifos)
    assert [it.rel for it in ds.items] == ["covid/c0.png", "covid/c1.png", "normal/n0.png", "normal/n1.png"]
    res = _within(120, lambda: runner.invoke(app, ["evaluate", str(model_file), str(root), "--json", "--n-boot", "0",
                                                   "--device", "cpu", "--workers", "1"]), fifos)
    assert res.exit_code == 0, res.output


def test_screening_and_training_list_the_same_files(tmp_path):
    root = tmp_path / "data"
    _png(root / "covid" / "a.png", 0)
    _png(root / "covid" / "B.PNG", 1)
    (root / "covid" / "c.WebP").write_bytes(b"not really webp")  # the ending decides
    _dicom(root / "covid" / "IM0001")                             # no extension: content decides
    _dicom(root / "covid" / "1.2.840.113619.2.55.3.604688119.9")  # UID name: its "extension" is .9
    (root / "covid" / "notes.txt").write_text("x")
    (root / "covid" / "README").write_bytes(b"\0" * 300)
    _png(root / "covid" / ".hidden.png", 2)
    _png(root / "covid" / ".cache" / "h.png", 3)
    _png(root / "normal" / "deep" / "n.tif", 4)
    os.symlink(root / "normal" / "deep", root / "normal" / "link")  # the same folder twice: listed once
    os.symlink("..", root / "normal" / "deep" / "loop")              # a loop
    os.mkfifo(root / "normal" / "fifo.png")
    listing = _within(30, lambda: find_images(root))
    keys = [k for k, _ in listing.files]
    ds = scan_dataset(root)
    assert keys == [it.rel for it in ds.items] == [
        "covid/1.2.840.113619.2.55.3.604688119.9", "covid/B.PNG", "covid/IM0001", "covid/a.png", "covid/c.WebP",
        "normal/deep/n.tif"]
    assert ds.n_ignored_files == 3  # notes.txt, README, the FIFO


def test_docstrings_list_every_image_ending():
    from xraynet import data

    for doc in (screen_mod.__doc__, data.__doc__, discovery.__doc__):
        for suffix in IMAGE_SUFFIXES:
            assert f" {suffix} " in doc.replace("``", " ").replace("\n", " "), suffix


def test_extensionless_dicom_gets_a_row(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _dicom(folder / "IM0001", 1)
    _dicom(folder / "series" / "1.2.840.113619.2.55.3.604688119.9", 2)
    res = runner.invoke(app, _cmd(folder, report, model_file))
    rows = _rows(report)
    assert set(rows) == {"IM0001", "series/1.2.840.113619.2.55.3.604688119.9"}
    assert all(r["status"] == "ok" and r["width"] == "48" for r in rows.values()), rows
    assert res.exit_code == 0


# ---------------------------------------------------------------- what cannot be listed keeps its rows
def _three_levels(folder: Path) -> None:
    _png(folder / "a.png", 0)
    _png(folder / "sub" / "b.png", 1)
    _png(folder / "sub" / "deeper" / "c.png", 2)
    _png(folder / "subway.png", 3)  # shares a prefix with sub/ but is not under it


def test_unlistable_subfolder_keeps_its_rows_and_exits_5(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _three_levels(folder)
    assert runner.invoke(app, _cmd(folder, report, model_file)).exit_code == 0
    before = _rows(report)
    (folder / "a.png").unlink()        # a real deletion: its row goes
    _png(folder / "subway.png", 30)    # a real change: screened again
    _png(folder / "new.png", 4)
    _deny_listing(monkeypatch, folder / "sub")
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 5, res.output
    line = res.stderr.strip()
    assert line.count("\n") == 0 and f"{folder / 'sub'}: cannot be listed (Permission denied)" in line
    assert "2 earlier report row(s) are kept unchanged" in line
    rows = _rows(report)
    assert list(rows) == ["new.png", "sub/b.png", "sub/deeper/c.png", "subway.png"]
    assert rows["sub/b.png"] == before["sub/b.png"] and rows["sub/deeper/c.png"] == before["sub/deeper/c.png"]
    assert rows["subway.png"]["sha256"] == file_sha256(folder / "subway.png")
    s = screen(folder, report, model_path=model_file)
    assert (s.unlisted, s.kept_unlisted, s.exit_code, s.dropped_rows) == (["sub"], 2, 5, 0)
    monkeypatch.undo()
    s = screen(folder, report, model_path=model_file)
    assert (s.unlisted, s.screened, s.exit_code) == ([], 0, 0) and len(_rows(report)) == 4


def test_unlistable_folder_itself_keeps_the_whole_report(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _three_levels(folder)
    screen(folder, report, model_path=model_file)
    data = report.read_bytes()
    _deny_listing(monkeypatch, folder)
    res = runner.invoke(app, _cmd(folder, report, model_file, "--json"))
    assert res.exit_code == 5 and report.read_bytes() == data
    assert '"kept_unlisted": 4' in res.stdout and f"{folder}: cannot be listed" in res.stderr


def test_entry_that_cannot_be_examined_keeps_its_rows(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _three_levels(folder)
    screen(folder, report, model_path=model_file)
    before = _rows(report)
    _fail(monkeypatch, "stat", lambda p, *a: p == str(folder / "sub"), errno.EIO)
    s = screen(folder, report, model_path=model_file)
    assert (s.exit_code, s.unlisted, s.kept_unlisted, s.dropped_rows) == (5, ["sub"], 2, 0)
    assert _rows(report) == before


def test_file_deleted_after_listing_gets_one_error_row_then_goes(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _png(folder / "a.png", 0)
    _png(folder / "gone.png", 1)
    real = screen_run.find_images

    def list_then_delete(*args, **kwargs):
        out = real(*args, **kwargs)
        (folder / "gone.png").unlink()
        return out

    monkeypatch.setattr(screen_run, "find_images", list_then_delete)
    s = screen(folder, report, model_path=model_file)
    rows = _rows(report)
    assert s.exit_code == 1 and rows["gone.png"]["status"] == "error"
    assert rows["gone.png"]["error"].startswith("unreadable: gone.png")
    monkeypatch.undo()
    s = screen(folder, report, model_path=model_file)
    assert s.exit_code == 0 and list(_rows(report)) == ["a.png"] and s.dropped_rows == 1


def test_training_refuses_a_folder_it_cannot_list(tmp_path, model_file, monkeypatch):
    root = tmp_path / "data"
    for cls in ("covid", "normal"):
        _png(root / cls / "x.png", 0)
        _png(root / cls / "more" / "y.png", 1)
    for denied in (root / "normal" / "more", root / "covid", root):
        monkeypatch.undo()
        _deny_listing(monkeypatch, denied)
        with pytest.raises(DataError, match=re.escape(f"{denied}: cannot be listed (Permission denied). Expected")):
            scan_dataset(root)
    res = runner.invoke(app, ["evaluate", str(model_file), str(root), "--device", "cpu"])
    assert res.exit_code == 2 and f"{root}: cannot be listed" in res.stderr and res.stderr.count("\n") == 1


# ---------------------------------------------------------------- report paths: reversible and unique
NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)


@given(st.binary(max_size=60))
@example(b"a\xe9.png")
@example(b"a\\xe9.png")
@example(b"\\\\x")
@example(b"caf\xc3\xa9\xed\xb2\x80")  # valid UTF-8, then an encoded surrogate (invalid)
def test_encode_path_round_trips(raw):
    text = encode_path(raw)
    text.encode("utf-8")  # plain text: no surrogates
    assert decode_path(text) == raw
    assert encode_path(os.fsdecode(raw)) == text  # str paths from os.listdir say the same


@given(st.binary(max_size=30), st.binary(max_size=30))
@example(b"a\xe9", b"a\\xe9")
@example(b"\\", b"\\\\")
def test_encode_path_is_unique(a, b):
    assert (encode_path(a) == encode_path(b)) == (a == b)


@pytest.mark.parametrize("text", ["a\\", "a\\q", "a\\xE9", "a\\x41", "a\\xc3\\xa9", "a\\x4", "\udce9"])
def test_decode_path_refuses_what_no_name_encodes_to(text):
    with pytest.raises(ValueError):
        decode_path(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(NAME_BYTES, min_size=1, max_size=6, unique=True))
@example([b"a\xe9", b"a\\xe9", b"'=x", b"=x", b"\\", b"\\\\"])
def test_real_byte_names_on_disk_round_trip_through_the_report(tmp_path_factory, names):
    names = [n + b".png" for n in names if not n.startswith(b".")]
    folder = tmp_path_factory.mktemp("names")
    for n in names:
        with open(os.path.join(os.fsencode(folder), n), "wb") as fh:
            fh.write(n)  # the content is the name: a misattributed path would read another file
    files = find_images(folder).files
    assert len({k for k, _ in files}) == len(files) == len(names)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([[report_cell(k)] for k, _ in files])
    cells = [r[0] for r in csv.reader(io.StringIO(buf.getvalue(), newline=""))]
    back = [path_of_cell(c) for c in cells]
    assert sorted(back) == sorted(names)
    for raw, (_, path) in zip(back, files):
        with open(os.path.join(os.fsencode(folder), raw), "rb") as fh:
            assert fh.read() == raw == Path(path).read_bytes()


def test_names_differing_only_by_escapes_get_their_own_rows(tmp_path, model_file):
    folder, ref = tmp_path / "in", tmp_path / "ref"
    names = {b"a\xe9.png": 1, b"a\\xe9.png": 2, b"=x.png": 3, b"'=x.png": 4, b"back\\slash.png": 5}
    fb = os.fsencode(folder)
    os.makedirs(fb)
    for name, seed in names.items():
        _png(Path(os.fsdecode(os.path.join(fb, name))), seed)
        _png(ref / f"{seed}.png", seed)
    screen(ref, tmp_path / "ref.csv", model_path=model_file)
    expected = {int(r["path"][:-4]): float(r["p_covid"]) for r in _rows(tmp_path / "ref.csv").values()}
    report = tmp_path / "r.csv"
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 0, res.output
    rows = _rows(report)
    assert set(rows) == {"a\\xe9.png", "a\\\\xe9.png", "'=x.png", "''=x.png", "back\\\\slash.png"}
    for cell, r in rows.items():
        raw = path_of_cell(cell)
        assert r["sha256"] == file_sha256(os.fsdecode(os.path.join(fb, raw)))
        assert abs(float(r["p_covid"]) - expected[names[raw]]) < 1e-6
    assert screen(folder, report, model_path=model_file).screened == 0  # each row matches its own file again


# ---------------------------------------------------------------- outputs that cannot be written
def _is_append(fd) -> bool:
    return isinstance(fd, int) and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND) and \
        _fd_path(fd).endswith("r.csv")


def _tmp_fd(fd) -> bool:
    return isinstance(fd, int) and _fd_path(fd).endswith(".tmp")


def _no_tmp(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _writes_into(folder: Path):
    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def when(path, flag=0, *args):
        return os.path.dirname(os.path.abspath(os.fspath(path))) == str(folder) and bool(flag & flags)
    return when


@pytest.mark.parametrize("existing", [False, True])
def test_read_only_report_folder(tmp_path, model_file, monkeypatch, existing):
    folder, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    report = out / "r.csv"
    _png(folder / "a.png", 0)
    if existing:
        screen(folder, report, model_path=model_file)
        _png(folder / "b.png", 1)
    before = sorted(out.iterdir()), report.read_bytes() if existing else None
    _fail(monkeypatch, "open", _writes_into(out), errno.EROFS)
    for call in ("replace", "unlink", "rename"):
        _fail(monkeypatch, call, lambda p, *a: os.path.dirname(os.path.abspath(os.fspath(p))) == str(out),
              errno.EROFS)
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 4
    _one_error_line(res, str(out / "r.csv.lock"), "Read-only file system", f"Make {out} writable",
                    "run the same command again")
    assert (sorted(out.iterdir()), report.read_bytes() if existing else None) == before


def test_disk_full_during_append_keeps_the_rows_before(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(4):
        _png(folder / f"f{i}.png", i)
    real_write = os.write
    calls = {"n": 0}

    def write(fd, data):
        if _is_append(fd):
            calls["n"] += 1
            if calls["n"] == 3:  # the third batch: half of it reaches the disk, then the disk is full
                return real_write(fd, bytes(data)[: len(data) // 2])
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    res = runner.invoke(app, _cmd(folder, report, model_file, "--batch-size", "1"))
    assert res.exit_code == 4
    _one_error_line(res, f"{report}: appending rows to the report failed (No space left on device)",
                    "The 2 row(s) appended earlier", "this batch was cut back", "Free disk space")
    assert list(_rows(report)) == ["f0.png", "f1.png"]  # parses; whole records only
    _no_tmp(tmp_path)
    monkeypatch.undo()
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 0 and list(_rows(report)) == [f"f{i}.png" for i in range(4)]
    assert all(r["sha256"] == file_sha256(folder / p) for p, r in _rows(report).items())


def test_failed_fsync_of_an_append_is_not_counted_as_written(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(3):
        _png(folder / f"f{i}.png", i)
    _fail(monkeypatch, "fsync", _is_append, errno.EIO, skip=1)
    s = None
    with pytest.raises(ReportWriteError, match="Input/output error.*Check the disk"):
        s = screen(folder, report, model_path=model_file, batch_size=1)
    assert s is None and list(_rows(report)) == ["f0.png"]


@pytest.mark.parametrize("point", ["create", "compaction", "sorted"])
def test_disk_full_during_a_rewrite_leaves_the_report_as_it_was(tmp_path, model_file, monkeypatch, point):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for name in ("b.png", "c.png"):
        _png(folder / name, ord(name[0]))
    if point != "create":
        screen(folder, report, model_path=model_file)
        if point == "compaction":
            _png(folder / "c.png", 7)      # changed: its old row must go first
        else:
            _png(folder / "a.png", 1)      # new and sorts first: appended, then the sorted rewrite
    before = report.read_bytes() if report.exists() else None
    _fail(monkeypatch, "fsync", _tmp_fd)
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 4
    failed = {"create": "creating the report", "compaction": "rewriting the report without its outdated rows",
              "sorted": "rewriting the report in sorted order"}[point]
    _one_error_line(res, f"{report}: {failed} failed (No space left on device)", "run the same command again")
    _no_tmp(tmp_path)
    if point == "create":
        assert not report.exists()
    elif point == "compaction":
        assert report.read_bytes() == before
    else:
        assert sorted(_rows(report)) == ["a.png", "b.png", "c.png"]  # every row, only not sorted yet
    monkeypatch.undo()
    s = screen(folder, report, model_path=model_file)
    assert s.exit_code == 0 and list(_rows(report)) == sorted(p.name for p in folder.iterdir())


def test_report_cannot_be_repaired_on_a_read_only_disk(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _png(folder / "a.png", 0)
    screen(folder, report, model_path=model_file)
    with open(report, "ab") as fh:
        fh.write(b"b.png,cut")  # a kill mid-append
    data = report.read_bytes()
    _fail(monkeypatch, "open", lambda p, flags=0, *a: os.fspath(p) == str(report) and flags & os.O_WRONLY,
          errno.EROFS)
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 4 and report.read_bytes() == data
    _one_error_line(res, "cutting the incomplete last record off the report failed", "Every complete row is kept")


def test_heatmap_that_cannot_be_written(tmp_path, model_file, monkeypatch):
    folder, report, heat = tmp_path / "in", tmp_path / "r.csv", tmp_path / "heat"
    for i in range(3):
        _png(folder / f"f{i}.png", i)
    heat.mkdir()
    _fail(monkeypatch, "open", _writes_into(heat), skip=1)  # the second heatmap meets a full disk
    res = runner.invoke(app, _cmd(folder, report, model_file, "--heatmaps", str(heat), "--threshold", "0",
                                  "--batch-size", "1"))
    assert res.exit_code == 4
    _one_error_line(res, f"{heat / 'f1.png.png'}: writing the heatmap PNG failed (No space left on device)")
    assert list(_rows(report)) == ["f0.png"] and [p.name for p in heat.iterdir()] == ["f0.png.png"]
    monkeypatch.undo()
    assert screen(folder, report, model_path=model_file, threshold=0.0, heatmaps=heat).exit_code == 0
    assert all(Path(r["heatmap"]).exists() for r in _rows(report).values())


@pytest.mark.parametrize("point", ["leftover_tmp", "append_open", "no_flock"])
def test_other_write_points_say_what_failed(tmp_path, model_file, monkeypatch, point):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _png(folder / "a.png", 0)
    if point == "leftover_tmp":
        (tmp_path / "r.csv.tmp").write_bytes(b"path,sha")  # a run killed mid-compaction left it
        _fail(monkeypatch, "unlink", lambda p, *a: os.fspath(p).endswith(".tmp"), errno.EACCES)
        want = "r.csv.tmp: removing the temp file a stopped run left failed (Permission denied)"
    elif point == "append_open":
        _fail(monkeypatch, "open", lambda p, flags=0, *a: bool(flags & os.O_APPEND), errno.EIO)
        want = "r.csv: opening the report to append rows failed (Input/output error)"
    else:
        def flock(fd, op):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        monkeypatch.setattr(fcntl, "flock", flock)
        want = "r.csv.lock: locking the report failed (No locks available)"
    with pytest.raises(ReportWriteError) as e:
        screen(folder, report, model_path=model_file)
    msg = str(e.value)
    assert want in msg and "Expected a writable folder" in msg and "run the same command again" in msg, msg
    assert screen_mod.exit_code_for(e.value) == 4
    monkeypatch.undo()
    assert screen(folder, report, model_path=model_file).exit_code == 0 and list(_rows(report)) == ["a.png"]


# ---------------------------------------------------------------- cron output
def test_non_terminal_output_is_not_wrapped(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    long = folder / ("a-rather-long-folder-name-" * 8) / ("and-another-" * 8)
    _png(long / "x.png", 0)
    _png(folder / "y.png", 1)
    screen(folder, report, model_path=model_file)
    _deny_listing(monkeypatch, long)
    res = runner.invoke(app, _cmd(folder, report, model_file))
    assert res.exit_code == 5
    (line,) = res.stderr.strip().splitlines()
    assert len(line) > 300 and f"{long}: cannot be listed" in line

    from xraynet.cli.common import console as make_console

    buf = io.StringIO()
    console = make_console(stderr=True)
    console.file = buf  # not a terminal, like cron's pipe
    console.print("warning: " + "word " * 60 + "/a/very/long/path/" * 10, highlight=False)
    assert buf.getvalue().count("\n") == 1


def test_screen_help_lists_every_exit_code():
    res = runner.invoke(app, ["screen", "--help"])
    text = " ".join(res.output.split())
    for code in ("0 every file", "1 some files are error rows", "2 usage error", "3 another run holds",
                 "4 the report, its lock or a heatmap could not be written", "5 a folder under FOLDER could not"):
        assert code in text, code
    for code in range(6):
        assert f"``{code}``" in screen_mod.__doc__


# ------------------------------------------------- found by a fresh tester
def test_an_empty_folder_keeps_the_report_rows_until_allow_empty(tmp_path, model_file):
    # An unmounted share is an empty folder: it must not empty the report and exit 0.
    folder, report = tmp_path / "share", tmp_path / "r.csv"
    for i in range(3):
        _png(folder / f"f{i}.png", i)
    assert screen(folder, report, model_path=model_file).exit_code == 0
    before = report.read_bytes()
    for p in folder.iterdir():
        p.unlink()
    s = screen(folder, report, model_path=model_file)
    assert (s.exit_code, s.kept_unlisted, report.read_bytes()) == (5, 3, before)
    assert "--allow-empty" in s.warnings[0] and "unmounted" in s.warnings[0]
    s = screen(folder, report, model_path=model_file, allow_empty=True)
    assert s.exit_code == 0 and report.read_text().count("\n") == 1  # header only


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_a_special_file_as_the_report_is_refused_untouched(tmp_path, model_file, kind):
    folder = tmp_path / "in"
    _png(folder / "a.png", 0)
    out = tmp_path / "out.csv"
    if kind == "fifo":
        os.mkfifo(out)
    else:
        try:
            os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("creating a device node needs root")
    with pytest.raises(ScreenError, match="Expected a regular file or no file"):
        screen(folder, out, model_path=model_file)
    assert not out.is_file() and not (tmp_path / "out.csv.lock").exists()


def test_machine_independent_dicom_errors_are_not_screened_again(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    folder.mkdir()
    import pydicom

    ds = pydicom.dcmread(_dicom(tmp_path / "full.dcm"))
    del ds.PixelData  # a structured report or presentation state has no image: that is its bytes, not the machine
    ds.save_as(folder / "report.dcm", enforce_file_format=True)
    first = screen(folder, report, model_path=model_file)
    assert first.screened == 1 and first.errors == 1
    again = screen(folder, report, model_path=model_file)
    assert (again.screened, again.dropped_rows, again.errors) == (0, 0, 1)


def test_heatmap_paths_are_absolute(tmp_path, model_file, monkeypatch):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _png(folder / "a.png", 0)
    monkeypatch.chdir(tmp_path)
    screen(folder, report, model_path=model_file, heatmaps="hm", threshold=0.0)
    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"), newline="")))
    assert rows[0]["heatmap"] == str(tmp_path / "hm" / "a.png.png") and Path(rows[0]["heatmap"]).is_file()


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_a_report_removed_or_moved_mid_run_is_written_again_whole(tmp_path, model_file, how):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(6):
        _png(folder / f"f{i}.png", i)
    done = []

    def progress(n, total):
        if n and not done:  # after the first batch is appended
            done.append(n)
            if how == "removed":
                report.unlink()
            else:
                report.rename(tmp_path / "moved.csv")

    s = screen(folder, report, model_path=model_file, batch_size=2, progress=progress)
    assert s.exit_code == 0 and any("written again" in w for w in s.warnings)
    rows = _rows(report)
    assert sorted(rows) == [f"f{i}.png" for i in range(6)]
    assert screen(folder, report, model_path=model_file).screened == 0


def test_heatmaps_inside_the_screened_folder_are_refused(tmp_path, model_file):
    folder = tmp_path / "in"
    _png(folder / "a.png", 0)
    with pytest.raises(ScreenError, match="heatmaps folder lies inside the screened folder"):
        screen(folder, tmp_path / "r.csv", model_path=model_file, heatmaps=folder / "hm")
    assert not (folder / "hm").exists()


def test_messages_stay_one_line_whatever_the_names():
    from xraynet.discovery import display_path

    assert display_path("c/bad\nfolder") == "c/bad\\x0afolder"
    assert display_path("\x1b[31mred") == "\\x1b[31mred"
    assert display_path(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    res = CliRunner().invoke(app, ["screen", "no\nsuch", "--out", "x.csv"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


def test_jpeg_2000_and_jpeg_ls_files_are_listed_and_screened(tmp_path, model_file):
    ic = pytest.importorskip("imagecodecs")
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    folder.mkdir()
    film = (np.random.default_rng(0).random((64, 64)) * 4095).astype(np.uint16)
    (folder / "a.jp2").write_bytes(ic.jpeg2k_encode(film, level=0, codecformat="jp2"))
    (folder / "b.J2K").write_bytes(ic.jpeg2k_encode(film, level=0, codecformat="j2k"))
    (folder / "c.jls").write_bytes(ic.jpegls_encode(film))
    s = screen(folder, report, model_path=model_file)
    rows = _rows(report)
    assert sorted(rows) == ["a.jp2", "b.J2K", "c.jls"] and s.errors == 0
    assert {r["width"] for r in rows.values()} == {"64"}


def test_a_usage_error_under_cron_is_plain_lines(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "xraynet.cli.main", "screen", str(tmp_path), "--no-such-option-x"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Error: No such option: --no-such-option-x" in res.stderr
    assert "╭" not in res.stderr and "│" not in res.stderr
