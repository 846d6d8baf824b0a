"""`xraynet screen`: report schema, odd names, broken files, incremental re-runs, exit codes, locks,
and kill -9 at random moments (the report must always parse, with every file exactly once)."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xraynet import __version__
from xraynet.decodecache import file_sha256
from xraynet.errors import ReportLockedError, ScreenError
from xraynet.modelfile import bundled_model_path, read_info
from xraynet.discovery import find_images
from xraynet.screening import screen
from xraynet.screening.writer import ROW_VERSION
from xraynet.cli.main import app

from helpers import REPORT_COLUMNS as COLUMNS
from helpers import check_whole_report as _check_whole
from helpers import random_png as _png
from helpers import read_report_rows as _read
from helpers import screen_command as _cmd

runner = CliRunner()
BAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bad"


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


ODD = ["a,b.png", 'q"uote.png', "new\nline.png", "ünï 画像.png", "=cmd.png", "-minus.png", "@at.png",
       "sub/dir/DEEP.PNG", "sub/x.jpeg"]


def _odd_folder(root: Path) -> list[str]:
    for i, name in enumerate(ODD):
        p = root / name
        if name.endswith(".jpeg"):
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 60), 90 + i, np.uint8)).save(p, format="JPEG")
        else:
            _png(p, i)
    _png(root / ".hidden.png", 99)
    _png(root / ".cache" / "in_hidden_dir.png", 98)
    (root / "notes.txt").write_text("not an image, no image extension")
    # DICOM magic without a DICOM name: must get a row (an error row: no valid dataset follows).
    (root / "sub" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return sorted(ODD + ["sub/IM0001"])


def test_schema_order_and_one_row_per_file_with_odd_names(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "report.csv"
    expected = _odd_folder(folder)
    s = screen(folder, report, model_path=model_file)
    text = report.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert COLUMNS == ["path", "sha256", "status", "error", "label", "p_covid", "p_normal", "flagged", "threshold",
                       "warnings", "width", "height", "model", "model_sha256", "xraynet_version", "screened_at",
                       "heatmap"]
    rows = _check_whole(report)
    neutral = {"=cmd.png": "'=cmd.png", "-minus.png": "'-minus.png", "@at.png": "'@at.png"}
    assert [r["path"] for r in rows] == [neutral.get(p, p) for p in expected]
    assert s.files == s.screened == len(expected) and s.skipped_unchanged == 0
    by_path = {r["path"]: r for r in rows}
    info = read_info(model_file)
    for rel in expected:
        r = by_path[neutral.get(rel, rel)]
        assert r["sha256"] == file_sha256(folder / rel)
        assert r["model"] == "tiny (tiny.h5)" and r["model_sha256"] == info["weights_sha256"]
        assert r["xraynet_version"] == ROW_VERSION and r["screened_at"].endswith("Z") and "T" in r["screened_at"]
        assert r["threshold"] == "0.5"
        if rel == "sub/IM0001":
            assert r["status"] == "error" and r["flagged"] == r["label"] == r["p_covid"] == ""
            continue
        assert r["status"] == "ok" and r["error"] == ""
        p = np.array([float(r["p_covid"]), float(r["p_normal"])])
        assert abs(p.sum() - 1) < 1e-9 and r["label"] == ["covid", "normal"][int(np.argmax(p))]
        assert r["flagged"] == str(int(p[0] >= 0.5))
        assert not r["p_covid"].startswith("'") and "e" not in r["p_covid"].lower()
    assert by_path["sub/x.jpeg"]["width"] == "60" and by_path["sub/x.jpeg"]["height"] == "40"
    assert "tiny" in by_path["a,b.png"]["warnings"].split(";")
    assert s.errors == 1 and s.exit_code == 1
    assert s.decode_seconds > 0 and s.network_seconds > 0 and s.images_per_s > 0


def test_broken_files_get_error_rows_with_reasons(tmp_path, model_file):
    folder = tmp_path / "in"
    good = _png(folder / "good.png", 1)
    (folder / "zero.png").write_bytes(b"")
    data = (_png(tmp_path / "t.png", 2, size=200)).read_bytes()
    (folder / "trunc.png").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("=HYPERLINK(\"http://x\")\nnot an image\n")
    s = screen(folder, tmp_path / "r.csv", model_path=model_file)
    rows = {r["path"]: r for r in _check_whole(tmp_path / "r.csv")}
    assert rows["good.png"]["status"] == "ok" and good.exists()
    for name, reason in (("zero.png", "empty"), ("trunc.png", "truncated"), ("text.jpg", "not_an_image")):
        r = rows[name]
        assert r["status"] == "error" and r["error"].startswith(f"{reason}: {name}: "), r["error"]
        assert "Expected" in r["error"] and str(folder) not in r["error"]
        assert r["flagged"] == r["label"] == r["width"] == ""
    assert (s.errors, s.errors_new, s.screened) == (3, 3, 4)


def test_rerun_skips_unchanged_then_rescreens_modified_and_drops_deleted(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(5):
        _png(folder / f"f{i}.png", i)
    screen(folder, report, model_path=model_file)
    before = report.read_bytes()
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.skipped_unchanged, s.dropped_rows) == (0, 5, 0)
    assert report.read_bytes() == before  # untouched, row for row
    _png(folder / "f1.png", 100)           # new content
    (folder / "f3.png").unlink()
    _png(folder / "f9.png", 9)             # new file
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.skipped_unchanged, s.dropped_rows, s.files) == (2, 3, 2, 5)
    rows = _check_whole(report)
    assert [r["path"] for r in rows] == ["f0.png", "f1.png", "f2.png", "f4.png", "f9.png"]  # sorted again
    assert {r["path"]: r["sha256"] for r in rows}["f1.png"] == file_sha256(folder / "f1.png")
    # Another threshold or model is not "unchanged": every row is screened again, once.
    s = screen(folder, report, model_path=model_file, threshold=0.0)
    assert s.screened == 5 and all(r["flagged"] == "1" and r["threshold"] == "0" for r in _check_whole(report))


def test_rows_of_another_xraynet_version_are_screened_again_once(tmp_path, model_file):
    """After an upgrade, a file the old version took (here a JPEG cut short and closed with an
    end-of-image marker, which decoded to a gray-filled film before decode pipeline 5) gets
    the new version's row; the report never keeps rows of two versions."""
    assert ROW_VERSION.startswith(__version__ + "+decode")
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(3):
        _png(folder / f"f{i}.png", i)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 100), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2] + b"\xff\xd9")
    screen(folder, report, model_path=model_file)
    with open(report, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    head = rows[0]
    for r in rows[1:]:  # as 0.1.0 wrote them: the cut JPEG an ok row
        r[head.index("xraynet_version")] = "0.1.0"
        if r[0] == "cut.jpg":
            for name, value in (("status", "ok"), ("error", ""), ("label", "normal"), ("p_covid", "0.25"),
                                ("p_normal", "0.75"), ("flagged", "0"), ("width", "100"), ("height", "120")):
                r[head.index(name)] = value
    with open(report, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(rows)
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.skipped_unchanged, s.files) == (4, 0, 4)
    rows = {r["path"]: r for r in _check_whole(report)}
    assert {r["xraynet_version"] for r in rows.values()} == {ROW_VERSION}
    assert rows["cut.jpg"]["status"] == "error" and rows["cut.jpg"]["error"].startswith("truncated: cut.jpg: ")
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.skipped_unchanged) == (0, 4)


def test_incomplete_last_record_is_repaired(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(3):
        _png(folder / f"f{i}.png", i)
    screen(folder, report, model_path=model_file)
    whole = report.read_bytes()
    lines = whole.split(b"\r\n")
    for tail in (lines[2][:30], b'"cut inside, a quoted\r\ncell'):
        # Drop the last row and leave a cut one instead, as a kill mid-write would.
        report.write_bytes(b"\r\n".join(lines[:3]) + b"\r\n" + tail)
        s = screen(folder, report, model_path=model_file)
        assert s.repaired_bytes == len(tail) and s.screened == 1 and s.skipped_unchanged == 2
        assert [r["path"] for r in _check_whole(report)] == ["f0.png", "f1.png", "f2.png"]


def test_foreign_or_other_model_report_is_refused(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _png(folder / "a.png", 0)
    report.write_bytes(b"name,score\r\nx,1\r\n")
    with pytest.raises(ScreenError, match="does not have the columns this model writes.*Expected header path"):
        screen(folder, report, model_path=model_file)
    assert report.read_bytes() == b"name,score\r\nx,1\r\n"
    res = runner.invoke(app, ["screen", str(folder), "--out", str(report), "--model", str(model_file)])
    assert res.exit_code == 2 and "another model or another program" in _flat(res.output)


def test_hidden_report_inside_folder_and_symlink_loops(tmp_path, model_file):
    folder = tmp_path / "in"
    _png(folder / "a" / "x.png", 0)
    _png(folder / "b.png", 1)
    os.symlink("..", folder / "a" / "loop")          # a -> .. -> a -> ...
    os.symlink(folder / "a", folder / "again")       # a second way into a
    os.symlink(folder / "nowhere.png", folder / "broken.png")
    report = folder / "report.csv"
    found = find_images(folder, exclude=[report]).files
    assert [rel for rel, _ in found] == ["a/x.png", "b.png", "broken.png"]
    s = screen(folder, report, model_path=model_file)
    s2 = screen(folder, report, model_path=model_file)  # the report, .lock and .tmp are never rows
    rows = {r["path"]: r for r in _check_whole(report)}
    assert set(rows) == {"a/x.png", "b.png", "broken.png"} and (s.files, s2.files, s2.screened) == (3, 3, 1)
    assert rows["broken.png"]["error"].startswith("unreadable: broken.png")  # retried every run


def test_non_recursive(tmp_path, model_file):
    _png(tmp_path / "in" / "top.png", 0)
    _png(tmp_path / "in" / "sub" / "deep.png", 1)
    screen(tmp_path / "in", tmp_path / "r.csv", model_path=model_file, recursive=False)
    assert [r["path"] for r in _check_whole(tmp_path / "r.csv")] == ["top.png"]


def test_cli_exit_codes_json_dry_run_and_lock(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(3):
        _png(folder / f"f{i}.png", i)
    base = ["screen", str(folder), "--out", str(report), "--model", str(model_file)]

    res = runner.invoke(app, base + ["--dry-run"])
    assert res.exit_code == 0 and res.stdout.split() == ["f0.png", "f1.png", "f2.png"]
    assert sorted(os.listdir(tmp_path)) == ["in"]  # nothing written, not even the lock

    res = runner.invoke(app, base + ["--json", "--batch-size", "2", "--workers", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for key in ("files", "screened", "skipped_unchanged", "errors", "flagged", "images_per_s", "seconds",
                "decode_seconds", "network_seconds"):
        assert key in doc
    assert (doc["files"], doc["screened"], doc["exit_code"]) == (3, 3, 0)

    res = runner.invoke(app, base + ["--quiet"])
    assert res.exit_code == 0 and res.stdout == ""

    (folder / "zero.png").write_bytes(b"")
    res = runner.invoke(app, base + ["--dry-run", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["would_screen"] == ["zero.png"]
    res = runner.invoke(app, base)  # not a terminal: no summary table, only the error note on stderr
    assert res.exit_code == 1 and res.stdout == "" and "1 new file(s) are error rows" in _flat(res.stderr)
    res = runner.invoke(app, base + ["--json"])  # still an error row in the report: still 1
    assert res.exit_code == 1 and json.loads(res.stdout)["screened"] == 0
    res = runner.invoke(app, base + ["--quiet"])  # nothing new: exit 1 says it, no line repeated every night
    assert res.exit_code == 1 and (res.stdout, res.stderr) == ("", "")

    with open(tmp_path / "r.csv.lock", "w") as held:  # another "run" holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        res = runner.invoke(app, base + ["--on-lock", "fail"])
        assert res.exit_code == 3 and "lock r.csv.lock is held" in _flat(res.output) and "--on-lock wait" in _flat(res.output)
        with pytest.raises(ReportLockedError):
            screen(folder, report, model_path=model_file, on_lock="fail")

    res = runner.invoke(app, ["screen", str(tmp_path / "missing"), "--out", str(report)])
    assert res.exit_code == 2 and "Expected a folder of images, got nothing at that path" in _flat(res.output)
    res = runner.invoke(app, base + ["--threshold", "1.5"])
    assert res.exit_code == 2
    res = runner.invoke(app, base + ["--model", str(folder / "f0.png")])
    assert res.exit_code == 2 and "not an HDF5 file" in _flat(res.output)


#: The outcome ../shared/data/bad/README.md gives each file: "ok", or the error reason.
#: Warnings: codes that must be in the row (+) or must not (-).
BAD_OUTCOMES = {
    "gray16bit_xray.png": ("ok", ()), "rgba_xray.png": ("ok", ()), "cmyk_xray.jpg": ("ok", ()),
    "empty_zero_bytes.png": ("empty", ()), "truncated_half_jpeg.jpg": ("truncated", ()),
    "text_file_not_image.jpg": ("not_an_image", ()),
    "dicom_mono2_presentation_lut_identity.dcm": ("ok", ("-likely_inverted",)),
    "dicom_mono2_presentation_lut_inverse.dcm": ("ok", ("-likely_inverted",)),
    "dicom_no_preamble_no_meta.dcm": ("ok", ()),
    "dicom_rle_extra_padding.dcm": ("ok", ()),
    "dicom_lateral_view.dcm": ("ok", ("+not_frontal",)),
    "dicom_j2k_frame_13000px_bomb.dcm": ("too_large", ()),
    "jpeg_12bit_extended.jpg": ("ok", ()),
    "gray_alpha_16bit_12bit_data.png": ("ok", ("-nearly_uniform",)),
    "gray16_12bit_data.png": ("ok", ("-nearly_uniform", "-likely_inverted")),
}


@pytest.mark.skipif(not BAD.is_dir(), reason=f"{BAD} not present (shared test images)")
def test_bundled_model_screens_the_shared_bad_files_as_cron_would(tmp_path):
    # A subprocess with stdout and stderr on pipes, as under cron: every file gets
    # the outcome the folder's README gives it, and nothing but the one-line note
    # about error rows reaches the terminal (library warnings go into the rows).
    report = tmp_path / "bad.csv"
    res = subprocess.run([sys.executable, "-m", "xraynet.cli.main", "screen", str(BAD), "--out", str(report),
                          "--workers", "2"], capture_output=True, text=True, timeout=300)
    info = read_info(bundled_model_path())
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"), newline=""))}
    assert set(rows) == set(os.listdir(BAD)) - {"README.md"}
    for name, r in rows.items():
        assert r["model_sha256"] == info["weights_sha256"]
        if name not in BAD_OUTCOMES:  # a case added to the folder later: a row, never a crash
            assert r["status"] in ("ok", "error") and not r["error"].startswith("internal_error"), (name, r)
            continue
        want, warns = BAD_OUTCOMES[name]
        if want == "ok":
            assert r["status"] == "ok", (name, r["error"])
        else:
            assert r["status"] == "error" and r["error"].startswith(want + ": "), (name, r["error"])
        codes = {w.split(" ", 1)[0] for w in r["warnings"].split(";") if w}
        for w in warns:
            assert (w[1:] in codes) == (w[0] == "+"), (name, r["warnings"])
    # The same film with Presentation LUT Shape INVERSE on MONOCHROME2 pixels is the same picture.
    ident, inv = rows["dicom_mono2_presentation_lut_identity.dcm"], rows["dicom_mono2_presentation_lut_inverse.dcm"]
    assert abs(float(ident["p_covid"]) - float(inv["p_covid"])) < 1e-6
    errors = sum(r["status"] == "error" for r in rows.values())
    assert res.returncode == 1 and errors == 4, (res.returncode, res.stderr)
    noise = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(noise) == 1 and "error" in noise[0], noise


# -------------------------------------------------------------- processes
def _data_rows(report: Path) -> int:
    try:
        return report.read_bytes().count(b".png,")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_a_valid_report(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    names = [f"d{i % 4}/img{i:03d}.png" for i in range(80)]
    for i, name in enumerate(names):
        _png(folder / name, i, size=160)
    rng = random.Random(1234)
    t_end = time.monotonic() + 35
    kills, seed = 0, 1000
    for attempt in range(6):
        if attempt:  # new content for some files before every run: each run has rows to drop and to append
            changed = rng.sample([n for n in names if (folder / n).exists()], 15)
            for name in changed:
                seed += 1
                _png(folder / name, seed, size=160)
            if attempt == 2:
                (folder / names[5]).unlink()
                _png(folder / "d9" / "new.png", 7, size=160)
        fresh = {file_sha256(folder / n).encode() for n in (changed if attempt else names)}
        proc = subprocess.Popen(_cmd(folder, report, model_file, "--batch-size", "2", "--workers", "2"))
        if attempt % 2 == 0:  # anywhere: start-up, hashing, compaction, appending
            time.sleep(rng.uniform(0.3, 1.5))
        else:  # after k of this run's rows, in the middle of the appends
            k = rng.randint(1, 10)
            while proc.poll() is None and time.monotonic() < t_end:
                data = report.read_bytes() if report.exists() else b""
                if sum(h in data for h in fresh) >= k:
                    break
                time.sleep(0.003)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if report.exists():
            _check_whole(report)
        assert time.monotonic() < t_end
    assert kills >= 3
    for _ in range(4):
        rc = subprocess.run(_cmd(folder, report, model_file), timeout=60).returncode
        if rc == 0:
            break
    assert rc == 0
    rows = _check_whole(report)
    current = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert [r["path"] for r in rows] == current and len(current) == 80
    assert all(r["sha256"] == file_sha256(folder / r["path"]) and r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_two_concurrent_runs_on_one_report(tmp_path, model_file):
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(100):
        _png(folder / f"img{i:02d}.png", i, size=400)
    first = subprocess.Popen(_cmd(folder, report, model_file, "--batch-size", "1", "--workers", "1"))
    try:
        deadline = time.monotonic() + 20
        while _data_rows(report) < 1 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert first.poll() is None, "the first run ended before the second could start; make it slower"
        second = runner.invoke(app, ["screen", str(folder), "--out", str(report), "--model", str(model_file),
                                     "--on-lock", "fail", "--quiet"])
        assert first.poll() is None, "the first run ended while the second ran; make it slower"
        assert second.exit_code == 3 and "another xraynet screen run" in _flat(second.output)
        third = subprocess.run(_cmd(folder, report, model_file, "--on-lock", "wait", "--json"),
                               capture_output=True, text=True, timeout=60)
    finally:
        first.wait(timeout=60)
    assert first.returncode == 0 and third.returncode == 0
    assert json.loads(third.stdout)["screened"] == 0  # it waited, then found everything done
    assert len(_check_whole(report)) == 100


def test_heatmaps_for_flagged_images(tmp_path, model_file):
    from PIL import Image

    folder = tmp_path / "films"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        _png(folder / "sub" / f"f{i}.png", seed=i)
    report, heat = tmp_path / "r.csv", tmp_path / "heat"
    # threshold 0: every readable film is flagged, so every one gets an overlay
    summary = screen(folder, report, model_path=model_file, threshold=0.0, heatmaps=heat)
    rows = _check_whole(report)
    assert summary.flagged == 3 and len(rows) == 3
    for r in rows:
        png = Path(r["heatmap"])
        assert png == heat / (r["path"] + ".png") and png.exists()
        assert Image.open(png).size == (32, 32)
    plain = screen(folder, tmp_path / "r2.csv", model_path=model_file, threshold=1.0, heatmaps=tmp_path / "h2")
    assert plain.flagged == 0 and all(r["heatmap"] == "" for r in _read(tmp_path / "r2.csv"))
