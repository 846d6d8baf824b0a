"""Screening as hospital IT runs it, where a fresh tester broke it: a file changed between
hashing and decoding, the same unreadable file every night, heatmaps of names near the
file-name limit, --heatmaps on a file, and a report reached through a symbolic link.

Every film is a small generated PNG in tmp_path."""
from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import random_png as _png
from helpers import read_report_rows as _read

import xraynet.screening.run as run_module
from xraynet.decodecache import file_sha256, file_version, hash_file
from xraynet.errors import ImageError, ScreenError
from xraynet.screening import ImageFile, decode_image, screen
from xraynet.screening.batch import _NAME_BYTES, heatmap_path
from xraynet.imaging import Preprocessing


def _swap(path, other) -> None:
    """Put ``other``'s bytes at ``path`` the way exporters do: a new file renamed over it."""
    tmp = f"{path}.new"
    with open(other, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    os.replace(tmp, path)


def test_hash_file_gives_the_version_it_read(tmp_path):
    p = _png(tmp_path / "a.png", 1)
    digest, version = hash_file(p)
    assert digest == file_sha256(p) and version == file_version(os.stat(p))
    _swap(p, _png(tmp_path / "b.png", 2))
    assert file_version(os.stat(p)) != version  # another inode


def test_decode_refuses_a_file_changed_since_it_was_hashed(tmp_path):
    p, other = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    prep = Preprocessing(image_size=32)
    _, version = hash_file(p)
    assert decode_image(ImageFile("a.png", str(p), version), prep).error is None
    original = p.read_bytes()
    _swap(p, other)
    out = decode_image(ImageFile("a.png", str(p), version), prep)
    assert out.pixels is None and out.error.startswith("changed: a.png: ")
    # The same bytes put back are another version too (a new inode, a new ctime).
    (tmp_path / "back.png").write_bytes(original)
    _swap(p, tmp_path / "back.png")
    assert decode_image(ImageFile("a.png", str(p), version), prep).error.startswith("changed: ")
    p.unlink()  # removed since: unreadable, which is tried again too
    assert decode_image(ImageFile("a.png", str(p), version), prep).error.startswith("unreadable: ")


@pytest.mark.parametrize("action", ["chmod", "hard link", "access time", "xattr"])
def test_a_change_of_metadata_alone_is_not_a_change(tmp_path, action):
    # These move the ctime without a write; a tester's backup (hard links) and antivirus
    # (attributes) made every film of the night 'changed' while the ctime counted.
    p = _png(tmp_path / "a.png", 1)
    _, version = hash_file(p)
    f = ImageFile("a.png", str(p), version)
    if action == "chmod":
        os.chmod(p, 0o600)
    elif action == "hard link":
        os.link(p, tmp_path / "a.bak")
    elif action == "access time":
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns + 10**9, st.st_mtime_ns))
    else:
        try:
            os.setxattr(p, "user.xraynet_test", b"1")
        except OSError:
            pytest.skip("no user extended attributes on this file system")
    assert decode_image(f, Preprocessing(image_size=32)).error is None
    p.write_bytes(p.read_bytes())  # written again, the same bytes: another mtime, another version
    assert decode_image(f, Preprocessing(image_size=32)).error.startswith("changed: ")


def test_the_pixels_come_from_the_file_that_was_hashed(tmp_path, monkeypatch):
    # A tester's thumbnails: the film renamed over by another between its hash and its decoding
    # gave the other picture to its row, for good. decode() checks the file it opened.
    from xraynet.imaging import decode
    import xraynet.imaging as imaging

    p, other = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    same = _png(tmp_path / "same_as_a.png", 1)
    _, version = hash_file(p)
    real = imaging._open_regular

    def open_then_swap(path):
        fh = real(path)
        _swap(p, other)  # after the open: the open file is still the hashed one
        return fh

    monkeypatch.setattr(imaging, "_open_regular", open_then_swap)
    ok = decode(p, version=version)
    monkeypatch.undo()
    np.testing.assert_array_equal(ok.pixels, decode(same).pixels)  # the hashed film's pixels, not b's
    with pytest.raises(ImageError) as e:  # now the name holds the other file
        decode(p, version=version)
    assert e.value.reason == "changed"


def test_a_file_swapped_between_hash_and_decode_is_screened_again(tmp_path, model_file, monkeypatch):
    # A tester's PACS-like re-export: other bytes right after hashing, the original back after
    # decoding. The row claimed the original's SHA-256 with the other film's probabilities, and
    # every later night kept it (the hash matched).
    folder = tmp_path / "in"
    for i in range(4):
        _png(folder / f"f{i}.png", i)
    target, original = folder / "f2.png", (folder / "f2.png").read_bytes()
    other = _png(tmp_path / "other.png", 99)
    hash_one = run_module._hash_one

    def hash_then_swap(f):
        out = hash_one(f)
        if f.key == "f2.png" and target.read_bytes() == original:
            _swap(target, other)
        return out

    monkeypatch.setattr(run_module, "_hash_one", hash_then_swap)
    report = tmp_path / "r.csv"
    s = screen(folder, report, model_path=model_file, workers=1)
    rows = {r["path"]: r for r in _read(report)}
    assert rows["f2.png"]["status"] == "error" and rows["f2.png"]["error"].startswith("changed: f2.png: ")
    assert s.errors == 1 and s.errors_new == 1
    monkeypatch.setattr(run_module, "_hash_one", hash_one)
    (tmp_path / "orig.png").write_bytes(original)
    _swap(target, tmp_path / "orig.png")
    s = screen(folder, report, model_path=model_file, workers=1)  # "changed" is tried again
    clean = tmp_path / "clean.csv"
    screen(folder, clean, model_path=model_file, workers=1)
    again, ref = {r["path"]: r for r in _read(report)}, {r["path"]: r for r in _read(clean)}
    assert s.errors == 0 and again["f2.png"]["status"] == "ok"
    # (another batch composition: equal to float32 rounding, not bit for bit)
    assert float(again["f2.png"]["p_covid"]) == pytest.approx(float(ref["f2.png"]["p_covid"]), abs=1e-6)
    assert again["f2.png"]["sha256"] == file_sha256(target)


def test_the_same_unreadable_file_is_no_news_the_next_night(tmp_path, model_file):
    folder = tmp_path / "in"
    _png(folder / "a.png", 1)
    os.symlink("gone.png", folder / "dangling.png")
    report = tmp_path / "r.csv"
    first = screen(folder, report, model_path=model_file)
    assert (first.errors, first.errors_new) == (1, 1)
    second = screen(folder, report, model_path=model_file)  # retried: same bytes (none), same reason
    assert (second.errors, second.errors_new, second.exit_code) == (1, 0, 1)
    (folder / "dangling.png").unlink()
    (folder / "dangling.png").write_bytes(b"")  # now another error: that is news
    third = screen(folder, report, model_path=model_file)
    assert (third.errors, third.errors_new) == (1, 1)


@pytest.mark.parametrize("name", ["L" * 251 + ".png", "é" * 120 + ".png", os.fsdecode(b"\xff" * 70 + b".png")])
def test_heatmaps_of_names_at_the_file_name_limit(tmp_path, model_file, name):
    # 255-byte names, multi-byte characters, and bytes that are not UTF-8 (escaped as \xNN, four
    # characters each) made the overlay's name (plus its temp suffix) too long: exit 4, every night.
    folder = tmp_path / "in"
    _png(folder / "a.png", 1)
    _png(os.path.join(os.fsencode(folder), os.fsencode(name)), 2)
    heat = tmp_path / "heat"
    s = screen(folder, tmp_path / "r.csv", model_path=model_file, threshold=0.0, heatmaps=heat)
    rows = _read(tmp_path / "r.csv")
    assert s.errors == 0 and len(rows) == 2
    paths = [r["heatmap"] for r in rows]
    assert all(os.path.isfile(p) for p in paths) and len(set(paths)) == 2
    assert all(len(os.fsencode(os.path.basename(p))) <= _NAME_BYTES for p in paths)


def test_long_heatmap_names_are_cut_apart(tmp_path):
    a, b = "x" * 300 + "a.png", "x" * 300 + "b.png"
    pa, pb = heatmap_path(tmp_path, a), heatmap_path(tmp_path, b)
    assert pa != pb and pa.name.endswith(".png") and len(os.fsencode(pa.name)) <= _NAME_BYTES
    deep = heatmap_path(tmp_path, "d" * 300 + "/one.png")
    assert deep.name == "one.png.png" and len(os.fsencode(deep.parent.name)) <= _NAME_BYTES
    assert heatmap_path(tmp_path, "sub/short.png") == tmp_path / "sub" / "short.png.png"
    # a film "a" and a folder "a.png/" (a tester's run stopped on it every night), "a.png~/" too
    paths = [heatmap_path(tmp_path, k) for k in ("a", "a.png/b.png", "a.png~/b.png", "A.PNG/b.png", "x~/b")]
    assert paths[0] == tmp_path / "a.png" and len(set(paths)) == 5
    files, folders = {p for p in paths}, {q for p in paths for q in p.parents}
    assert not files & folders


def test_heatmaps_on_a_file_is_refused_before_screening(tmp_path, model_file):
    _png(tmp_path / "in" / "a.png", 1)
    (tmp_path / "heat").write_text("a file")
    with pytest.raises(ScreenError, match="Expected a folder"):
        screen(tmp_path / "in", tmp_path / "r.csv", model_path=model_file, heatmaps=tmp_path / "heat")
    assert not (tmp_path / "r.csv").exists()


def test_a_report_reached_through_a_link_stays_where_the_link_points(tmp_path, model_file):
    folder = tmp_path / "in"
    for i in range(3):
        _png(folder / f"m{i}.png", i)
    (tmp_path / "store").mkdir()
    link = tmp_path / "screen.csv"
    link.symlink_to(tmp_path / "store" / "real.csv")  # dangling until the first run
    screen(folder, link, model_path=model_file)
    _png(folder / "a_new.png", 7)  # sorts first: the run rewrites the report in sorted order
    screen(folder, link, model_path=model_file)
    assert link.is_symlink()
    rows = _read(tmp_path / "store" / "real.csv")
    assert [r["path"] for r in rows] == ["a_new.png", "m0.png", "m1.png", "m2.png"]
    assert not (tmp_path / "store" / "real.csv.tmp").exists()


def _lines_of(report) -> list[bytes]:
    return report.read_bytes().split(b"\r\n")


def test_a_damaged_row_in_the_middle_costs_only_that_row(tmp_path, model_file, monkeypatch):
    # The reader used to cut everything from the first malformed record on: the rows of a folder
    # that could not be listed that night were lost with it.
    import errno

    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(4):
        _png(folder / f"a{i}.png", i)
    for i in range(3):
        _png(folder / "zsub" / f"z{i}.png", 10 + i)
    screen(folder, report, model_path=model_file)
    before = {r["path"]: r for r in _read(report)}
    lines = _lines_of(report)
    lines[2] = lines[2][:40] + b'\x00garbage,"unclosed'  # row a1.png, damaged in place
    report.write_bytes(b"\r\n".join(lines))
    real = os.scandir

    def deny(path="."):
        if os.fspath(path) == os.fspath(folder / "zsub"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", deny)
    s = screen(folder, report, model_path=model_file)
    rows = {r["path"]: r for r in _read(report)}
    # a1.png again, and the rows read after the damage (a2, a3: never reused as they are)
    assert s.exit_code == 5 and s.kept_unlisted == 3 and s.screened == 3
    assert any("1 malformed record(s)" in w for w in s.warnings)
    assert sorted(rows) == sorted(before) and rows["a0.png"] == before["a0.png"]
    assert all(rows[k] == before[k] for k in rows if k.startswith("zsub/"))
    for k in ("a1.png", "a2.png", "a3.png"):
        assert float(rows[k]["p_covid"]) == pytest.approx(float(before[k]["p_covid"]), abs=1e-6)
    assert b"garbage" not in report.read_bytes()


def _screened_once(tmp_path, model_file, n: int = 3):
    """(folder, report, the report's bytes) after one run over ``n`` fresh films a0.png ..."""
    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(n):
        _png(folder / f"a{i}.png", i)
    screen(folder, report, model_path=model_file)
    return folder, report, report.read_bytes()


def test_a_cut_last_record_is_still_cut_and_blank_lines_cost_nothing(tmp_path, model_file):
    folder, report, clean = _screened_once(tmp_path, model_file)
    lines = _lines_of(report)
    report.write_bytes(b"\r\n".join(lines[:2] + [b""] + lines[2:]))  # a blank line between rows
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.warnings, s.repaired_bytes) == (0, [], 0) and report.read_bytes() == clean
    report.write_bytes(clean + clean.split(b"\r\n")[1][:30])  # a kill mid-append
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.warnings, s.repaired_bytes) == (0, [], 30) and report.read_bytes() == clean


def test_a_report_saved_with_a_byte_order_mark_is_read(tmp_path, model_file):
    # Spreadsheets' "CSV UTF-8" puts one before the header; the run refused such a report (exit 2).
    folder, report, clean = _screened_once(tmp_path, model_file)
    report.write_bytes(b"\xef\xbb\xbf" + clean)
    s = screen(folder, report, model_path=model_file)
    assert (s.screened, s.exit_code) == (0, 0) and report.read_bytes() == clean


def test_a_link_to_a_folder_of_the_tree_never_takes_its_paths(tmp_path):
    from xraynet.discovery import find_images

    root = tmp_path / "in"
    _png(root / "patients" / "p0.png", 0)
    _png(root / "patients" / "deep" / "p1.png", 1)
    _png(tmp_path / "outside" / "o.png", 2)
    (root / "Archive_link").symlink_to(root / "patients")        # sorts before its target
    (root / "patients" / "A_up").symlink_to(root)                 # a loop, sorting first inside
    (root / "B_out").symlink_to(tmp_path / "outside")            # a folder outside the tree
    (root / "C_out_again").symlink_to(tmp_path / "outside")
    keys = [k for k, _ in find_images(root).files]
    assert keys == ["B_out/o.png", "patients/deep/p1.png", "patients/p0.png"]


def test_rows_read_past_damage_or_doubled_are_never_reused(tmp_path, model_file):
    # A quoted path cell may hold a line break and then text shaped like a row. Lose its opening
    # quote and that text reads as a good row: a tester's fake row for another film. Rows read
    # past damage, and a path with two rows, are screened again, never taken as they are.
    import csv
    import io

    folder, report = tmp_path / "in", tmp_path / "r.csv"
    _png(folder / "a.png", 1)
    _png(folder / "b.png", 2)
    screen(folder, report, model_path=model_file)
    clean = {r["path"]: r for r in _read(report)}
    head, *lines = report.read_bytes().decode().split("\r\n")
    a_line = next(x for x in lines if x.startswith("a.png,"))
    b = clean["b.png"]
    fake = a_line.replace(clean["a.png"]["p_covid"], b["p_covid"]).replace(clean["a.png"]["p_normal"], b["p_normal"])
    assert fake != a_line
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(["notes\r\n" + fake + "\r\nz.png", *a_line.split(",")[1:]])
    evil = buf.getvalue()[1:]  # the opening quote lost
    for doubled in (False, True):
        body = [x for x in lines if x and (doubled or not x.startswith("a.png,"))]
        report.write_bytes(("\r\n".join([head, evil.rstrip("\r\n"), *body]) + "\r\n").encode())
        s = screen(folder, report, model_path=model_file)
        rows = {r["path"]: r for r in _read(report)}
        assert sorted(rows) == ["a.png", "b.png"] and s.screened >= 1
        assert rows["a.png"]["p_covid"] == clean["a.png"]["p_covid"], doubled
