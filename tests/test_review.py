"""The HTML review page (xraynet.review): odd and hostile names escaped, links that resolve, a
strict parse, byte-identical regeneration, thumbnails reused and cleaned, the model named honestly,
`screen --html` and `review` through the CLI (silent from cron, exit 4 when the page cannot be
written), and a 10,000-row report in reasonable time and size."""
from __future__ import annotations

import csv
import errno
import hashlib
import html
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xraynet.cli.main import app
from xraynet.errors import ReportWriteError, ScreenError
from xraynet.modelfile import read_info
from xraynet.review import files_folder, read_report, write_review
from xraynet.screening import exit_code_for, report_columns

from helpers import (CASES, CLASSES, FLAGGED, REVIEW_FILM_SHAPE, THRESHOLD, XSS, build_case, make_model, random_png,
                     shown_name)

runner = CliRunner()


def _png(path, seed: int) -> None:
    """A film of the case's size (seeded noise) at ``path`` (str, bytes or Path)."""
    random_png(path, seed, REVIEW_FILM_SHAPE)


class StrictPage(HTMLParser):
    """Parses the page and fails on unbalanced tags; collects what the tests look at."""

    VOID = {"meta", "img", "br", "input", "hr", "link", "source", "col", "wbr", "area", "base"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.elements, self.urls, self.cells = [], [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "data-src"):
                self.urls.append(v)
        if tag == "td":
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.problems.append(f"self-closing <{tag}/>")
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> StrictPage:
    p = StrictPage()
    p.feed(text)
    p.close()
    assert not p.problems and p.stack == [], (p.problems, p.stack)
    # Every attribute value is quoted (escaped values never hold '>' so a tag ends at the first '>').
    markup = text.split("<style>")[0] + text.split("</style>")[1].split("<script>")[0]
    for tag in re.findall(r"<[a-zA-Z][^>]*>", markup):
        assert not re.search(r"=(?!\")", re.sub(r'"[^"]*"', '""', tag)), tag
    return p


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model.h5")


@pytest.fixture()
def case(tmp_path, model_file):
    return build_case(tmp_path, model_file)


def _page(case, model_file, **kw):
    res = write_review(case["report"], case["page"], model_path=model_file, folder=case["folder"], **kw)
    return res, case["page"].read_text(encoding="utf-8")


def test_every_cell_is_escaped_and_the_page_parses(case, model_file):
    res, text = _page(case, model_file)
    p = parse(text)
    assert res.rows == len(CASES) and res.warnings == []
    # The hostile names are text: no element came from them, and they read back exactly.
    assert not any(tag == "img" and a.get("src") == "x" for tag, a in p.elements)
    assert [t for t, _ in p.elements].count("script") == 1
    assert "<img src=x" not in text and "<script>alert" not in text and "<b>odd</b>" not in text
    assert html.escape(XSS) in text
    cells = set(p.cells)
    for name, status, *_ in CASES:
        assert shown_name(name) in cells, name
    assert "bad\\xff name.png" in cells and "back\\\\slash.png" in cells and "'quoted.png" in cells
    assert "=cmd.png" in cells and "''quoted.png" not in cells and "'=cmd.png" not in cells
    assert "likely_inverted; decoder_warning (pillow: <b>odd</b> & text)" in cells
    assert any("no image format recognises it" in c and "'\"<>&' bytes" in c for c in cells)
    # The script builds no HTML from data and is the one the policy allows.
    script = text.split("<script>")[1].split("</script>")[0]
    assert "innerHTML" not in script and "eval(" not in script and "document.write" not in script
    import base64
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = next(a["content"] for t, a in p.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert f"script-src 'sha256-{digest}'" in csp and csp.startswith("default-src 'none'; img-src 'self' file:;")
    assert not re.search(r"https?:|//", text)


def test_links_are_relative_and_resolve_to_files(case, model_file):
    res, text = _page(case, model_file)
    p = parse(text)
    base = os.fsencode(case["page"].parent)
    thumbs = [u for u in p.urls if u.startswith("review_files/")]
    heat = [u for u in p.urls if not u.startswith("review_files/")]
    with_file = [c for c in CASES if c[1] == "ok" and c[0] != "missing.png"]
    assert len(thumbs) == len(set(thumbs)) == len(with_file) == res.thumbnails_made
    assert len(heat) == 2 * sum(1 for c in CASES if c[4])  # each overlay: a link and its image
    for u in p.urls:
        assert not re.match(r"[a-zA-Z][\w+.-]*:", u) and not u.startswith("/"), u
        assert not set(u) & set(" #?\"'<>\\"), u  # percent-encoded
        target = os.path.join(base, unquote_to_bytes(u))
        assert os.path.isfile(target), u
    # The non-UTF-8 film's overlay: the raw name's bytes, percent-encoded.
    assert any("bad%5Cxff%20name.png.png" in u for u in heat)
    for u in thumbs:
        with Image.open(os.path.join(base, unquote_to_bytes(u))) as im:
            assert im.format == "JPEG" and max(im.size) <= 160


def test_placeholders_for_errors_and_missing_films(case, model_file):
    _, text = _page(case, model_file)
    rows = [r for r in text.split("<tr") if "</td>" in r]
    missing = [r for r in rows if ">missing.png<" in r]
    assert len(missing) == 1 and "no thumbnail" in missing[0]
    assert all("no thumbnail" in r for r in rows if 'class="er' in r)


def test_order_flagged_first_then_probability_then_errors(case, model_file):
    _, text = _page(case, model_file)
    p = parse(text)
    order = [c for c in p.cells if c in {shown_name(n) for n, *_ in CASES}]
    ok = sorted((c for c in CASES if c[1] == "ok"), key=lambda c: (c[2] < 0.5, -c[2]))
    errors = sorted(shown_name(c[0]) for c in CASES if c[1] == "error")
    assert order == [shown_name(c[0]) for c in ok] + errors


def test_summary_model_and_run_sections(case, model_file):
    _, text = _page(case, model_file)
    flat = re.sub(r"<[^>]+>", " ", text)
    flat = html.unescape(" ".join(flat.split()))
    assert f"files (rows) {len(CASES)}" in flat and f"screened ok {len(CASES) - 2}" in flat
    assert f"flagged covid {len(FLAGGED)}" in flat and "predicted label covid 5; normal 6" in flat
    assert "error rows, by reason 2 (empty 1; not_an_image 1)" in flat
    assert "rows with warnings 3" in flat and "decoder_warning 1; likely_inverted 1; nearly_uniform 1; tiny 1" in flat
    sha = read_info(model_file)["weights_sha256"]
    assert "name tiny (model.h5)" in flat and f"SHA-256 {sha}" in flat
    assert "threshold 0.5 (13 rows): flagged when p_covid ≥ it" in flat
    assert ("how it was chosen the highest threshold whose sensitivity reaches 0.9, chosen on validation films of "
            "the sources siim, ieee8023") in flat
    assert "sensitivity there 0.900 (95% CI 0.740–0.970, 27/30)" in flat
    assert "Model card no model card" in flat
    assert "latest screened_at 2026-11-29T09:00:00Z" in flat and "rows written by xraynet 0.1.0 (13 rows)" in flat


def _card(**over) -> dict:
    """A model card of xraynet.modelcard's layout (card_version 1), small, with hostile text."""
    from xraynet.modelcard import CARD_KEYS

    card = {k: None for k in CARD_KEYS}
    card.update({
        "card_version": 1, "classes": CLASSES,
        "intended_use": {"summary": "triage <aid>", "not_for": ["diagnosis"], "before_use": "evaluate first"},
        "validation": {
            "within_source": {"available": True, "note": "within <one> source", "sources": {
                "siim": {"films": 750, "auc": {"covid": {"value": 0.88, "ci": [0.855, 0.904], "reason": None},
                                               "normal": {"value": None, "ci": [None, None],
                                                          "reason": "no normal films in this source"}}}},
                "combined": {"covid": {"value": 0.878, "ci": [0.853, 0.902], "reason": None}}},
            "leave_one_source_out": {"note": "held out", "folds": [
                {"held_out": "siim", "status": "ok", "films": 3789,
                 "auc": {"covid": {"value": 0.663, "ci": [0.646, 0.681], "reason": None}},
                 "screening": {"sensitivity": {"value": 0.73}, "specificity": {"value": 0.49}}},
                {"held_out": "nih", "status": "not_possible", "reason": "no covid <films>"}]}},
        "threshold": {"rule": "the highest <rule>"},
        "limits": [{"topic": "not a device", "text": "research <only>"}]})
    card.update(over)
    return card


def test_model_card_within_source_figures_first(case, model_file, tmp_path):
    carded = make_model(tmp_path / "carded.h5", metadata={"threshold": THRESHOLD, "model_card": _card()})
    # The card is metadata: the weights, and so the report's model_sha256, are the same.
    assert read_info(carded)["weights_sha256"] == read_info(model_file)["weights_sha256"]
    _, text = _page(case, carded)
    parse(text)
    card = text.split('<section id="card">')[1].split("</section>")[0]
    visible, more = card.split("<details>")
    assert "triage &lt;aid&gt;" in visible and "Not for: diagnosis." in visible and "within &lt;one&gt; source" in visible
    assert ("<td>siim</td><td>750</td><td>0.880 (0.855&ndash;0.904)</td><td>- (no normal films in this source)</td>"
            in visible)
    assert "<td>same-source pairs of all sources</td><td></td><td>0.878 (0.853&ndash;0.902)</td>" in visible
    assert "<td>0.663 (0.646&ndash;0.681)</td>" in more and "0.73 / 0.49" in more
    assert "no covid &lt;films&gt;" in more and "the highest &lt;rule&gt;" in more and "research &lt;only&gt;" in more


def test_an_unreadable_model_card_is_said_so(case, tmp_path):
    newer = make_model(tmp_path / "newer.h5", metadata={"threshold": THRESHOLD, "model_card": _card(card_version=99)})
    _, text = _page(case, newer)
    parse(text)
    assert "model card unreadable: " in text and "the model card is of a newer layout" in text


def test_another_model_is_named_not_misattributed(case, tmp_path):
    other = make_model(tmp_path / "other.h5", seed=7, metadata={"threshold": {**THRESHOLD, "value": 0.25},
                                                                "model_card": {"secret": "not this report's"}})
    res, text = _page(case, other)
    parse(text)
    sha = read_info(other)["weights_sha256"]
    assert len(res.warnings) == 1 and "not the model that screened this report" in res.warnings[0]
    assert sha in res.warnings[0] and "pass --model" in res.warnings[0]
    assert 'class="warn"' in text and "not this report" not in text and "0.25 for class" not in text
    assert "unknown: the model file given is not the one that screened this report" in text
    assert "screening class</th><td>covid" in text  # still found from the rows themselves
    r = runner.invoke(app, ["review", str(case["report"]), "--html", str(case["page"]), "--model", str(other)])
    assert r.exit_code == 0 and "warning:" in r.stderr and "not the model that screened" in r.stderr


def test_regenerating_gives_the_same_bytes_and_reuses_thumbnails(case, model_file):
    first, text = _page(case, model_file)
    thumbs = {p.name: p.stat().st_mtime_ns for p in files_folder(case["page"]).iterdir()}
    again, text2 = _page(case, model_file)
    assert text2 == text and again.thumbnails_made == 0 and again.thumbnails_reused == first.thumbnails_made
    assert {p.name: p.stat().st_mtime_ns for p in files_folder(case["page"]).iterdir()} == thumbs
    # Without the folder the thumbnails already made are used: still the same page.
    write_review(case["report"], case["page"], model_path=model_file)
    assert case["page"].read_text(encoding="utf-8") == text


def test_stale_thumbnails_are_removed_and_nothing_else(case, model_file):
    _page(case, model_file)
    files = files_folder(case["page"])
    (files / "notes.txt").write_text("mine")
    lines = case["report"].read_bytes().split(b"\r\n")
    gone = next(line for line in lines if line.startswith(b"sp ace.png,"))
    sha = gone.split(b",")[1].decode()
    assert (files / f"{sha}.jpg").exists()
    case["report"].write_bytes(b"\r\n".join(line for line in lines if line != gone))
    res, _ = _page(case, model_file)
    assert res.thumbnails_removed == 1 and not (files / f"{sha}.jpg").exists() and (files / "notes.txt").exists()


def test_a_changed_film_gets_no_thumbnail_of_other_bytes(case, model_file):
    _png(case["folder"] / "sp ace.png", 999)  # changed since its row was written
    res, text = _page(case, model_file)
    row = next(r for r in text.split("<tr") if ">sp ace.png<" in r)
    assert "no thumbnail" in row


def test_a_torn_last_record_is_left_out(case, model_file):
    with open(case["report"], "ab") as fh:
        fh.write(b"zz.png,abc,ok,,cov")  # a run still appending
    rep = read_report(case["report"])
    assert len(rep.rows) == len(CASES) and rep.left_out == 1
    _, text = _page(case, model_file)
    assert "zz.png" not in text and "1 incomplete or malformed record(s)" in text


@pytest.mark.parametrize("content, got", [
    (b"", "an empty file"), (b"a,b\r\n1,2\r\n", "got 'a,b'"),
    (b"\x1b[31mRED\x1b]0;title\x07,x\n", "got '\\x1b[31mRED\\x1b]0;title\\x07,x'")])
def test_not_a_report(tmp_path, model_file, content, got):
    bad = tmp_path / "r.csv"
    bad.write_bytes(content)
    with pytest.raises(ScreenError) as e:
        write_review(bad, tmp_path / "review.html", model_path=model_file)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: not an xraynet screening report. Expected the header path,sha256") and got in msg
    assert "Pass the CSV that xraynet screen --out wrote." in msg and not (tmp_path / "review_files").exists()
    r = runner.invoke(app, ["review", str(bad), "--html", str(tmp_path / "review.html"), "--model", str(model_file)])
    assert r.exit_code == 2 and "not an xraynet screening report" in r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr  # the file's bytes are quoted, never echoed


def test_page_paths_that_cannot_work(case, model_file, tmp_path):
    for html_path, want in ((case["report"], "would replace the report"),
                            (tmp_path / "nope" / "r.html", "the review page's folder does not exist"),
                            (tmp_path, "got a directory"),
                            (case["folder"] / "r.html", "would lie inside the screened folder")):
        with pytest.raises(ScreenError, match=want):
            write_review(case["report"], html_path, model_path=model_file, folder=case["folder"])
    assert case["report"].read_bytes().startswith(b"path,sha256")
    r = runner.invoke(app, ["review", str(case["report"]), "--html", str(case["page"]), "--model", str(model_file),
                            "--folder", str(tmp_path / "gone")])
    assert r.exit_code == 2 and r.stderr.strip() == (f"error: {tmp_path / 'gone'}: cannot make thumbnails from it. "
                                                     "Expected the screened folder, got nothing at that path. "
                                                     "Check --folder.")
    assert not case["page"].exists()


def test_a_report_that_cannot_be_read(tmp_path, model_file):
    with pytest.raises(ScreenError) as e:
        write_review(tmp_path / "nope.csv", tmp_path / "review.html", model_path=model_file)
    assert str(e.value) == (f"{tmp_path / 'nope.csv'}: the report cannot be read (No such file or directory). "
                            "Expected the CSV written by xraynet screen --out, got FileNotFoundError. Check the path "
                            "and its permissions.")


def test_a_thumbnails_folder_that_cannot_be_made(case, model_file, monkeypatch):
    (case["page"].parent / "review_files").write_text("a file where the folder goes")
    with pytest.raises(ReportWriteError) as e:
        write_review(case["report"], case["page"], model_path=model_file, folder=case["folder"])
    assert str(e.value).startswith(f"{case['page'].parent / 'review_files' / '.lock'}: creating the thumbnails "
                                   "folder and its lock failed (File exists)")
    assert exit_code_for(e.value) == 4 and not case["page"].exists()


def test_a_thumbnail_that_cannot_be_removed(case, model_file, monkeypatch):
    _page(case, model_file)
    stale = files_folder(case["page"]) / ("0" * 64 + ".jpg")
    stale.write_bytes(b"old")
    real = os.unlink

    def unlink(path, *a, **k):
        if os.fspath(path) == str(stale):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(ReportWriteError) as e:
        _page(case, model_file)
    assert "review_files: updating the thumbnails folder failed (Read-only file system)" in str(e.value)
    assert "Make " in str(e.value) and "or pass another --html" in str(e.value)


def _fail_open_in(monkeypatch, folder: Path, err: int):
    """Writes into ``folder`` fail with ``err`` (the thumbnails folder's lock, already there, still opens)."""
    real = os.open

    def fake(path, flags, *a, **k):
        p = os.path.abspath(os.fspath(path))
        if (os.path.dirname(p) == str(folder) and flags & (os.O_WRONLY | os.O_RDWR)
                and os.path.basename(p) != ".lock"):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real(path, flags, *a, **k)
    monkeypatch.setattr(os, "open", fake)


@pytest.mark.parametrize("where", ["page", "thumbnail"])
def test_a_page_that_cannot_be_written_says_so_and_keeps_the_report(case, model_file, monkeypatch, where):
    out = case["page"].parent / "out"
    out.mkdir()
    page = out / "review.html"
    before = case["report"].read_bytes()
    if where == "page":
        _fail_open_in(monkeypatch, out, errno.ENOSPC)
        want = f"{page}: writing the review page failed (No space left on device)"
    else:
        (out / "review_files").mkdir()
        _fail_open_in(monkeypatch, out / "review_files", errno.ENOSPC)
        want = "writing a thumbnail failed (No space left on device)"
    with pytest.raises(ReportWriteError) as e:
        write_review(case["report"], page, model_path=model_file, folder=case["folder"])
    assert want in str(e.value) and "The report is complete and unchanged" in str(e.value)
    assert exit_code_for(e.value) == 4 and "run the same command again" in str(e.value)
    assert case["report"].read_bytes() == before and not page.exists()
    assert not [p for p in out.rglob("*.tmp")]


def _cmd(folder, report, model_file, *extra):
    return ["screen", str(folder), "--out", str(report), "--model", str(model_file), "--workers", "1", *extra]


def test_screen_html_writes_and_refreshes_the_page(tmp_path, model_file):
    folder, report, page = tmp_path / "in", tmp_path / "report.csv", tmp_path / "review.html"
    for i, name in enumerate(["a.png", XSS, "sub/c d.png"]):
        _png(os.fsencode(folder / name), i)
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    res = runner.invoke(app, _cmd(folder, report, model_file, "--html", str(page), "--heatmaps",
                                  str(tmp_path / "heat"), "--threshold", "0"))
    assert res.exit_code == 1, res.output  # one error row
    text = page.read_text(encoding="utf-8")
    p = parse(text)
    assert not any(tag == "img" and a.get("src") == "x" for tag, a in p.elements)
    assert html.escape(XSS) in text and len(list(files_folder(page).glob("*.jpg"))) == 3
    for u in p.urls:
        assert os.path.isfile(os.path.join(os.fsencode(tmp_path), unquote_to_bytes(u))), u
    assert sum(1 for u in p.urls if u.startswith("heat/")) == 6  # three flagged films: link + image each
    # Nothing new to screen: the page is written all the same, and identical.
    page.unlink()
    res = runner.invoke(app, _cmd(folder, report, model_file, "--html", str(page), "--threshold", "0"))
    assert res.exit_code == 1 and page.read_text(encoding="utf-8") == text
    # A film gone: its row and its thumbnail go.
    os.remove(folder / "a.png")
    assert runner.invoke(app, _cmd(folder, report, model_file, "--html", str(page), "--threshold", "0")).exit_code == 1
    assert ">a.png<" not in page.read_text(encoding="utf-8") and len(list(files_folder(page).glob("*.jpg"))) == 2
    # --dry-run writes nothing, not even the page.
    page.unlink()
    assert runner.invoke(app, _cmd(folder, report, model_file, "--html", str(page), "--dry-run")).exit_code == 0
    assert not page.exists()


def test_screen_html_page_failure_is_exit_4_with_one_line(tmp_path, model_file, monkeypatch):
    folder, report, out = tmp_path / "in", tmp_path / "report.csv", tmp_path / "out"
    _png(os.fsencode(folder / "a.png"), 0)
    out.mkdir()
    _fail_open_in(monkeypatch, out, errno.EROFS)
    res = runner.invoke(app, _cmd(folder, report, model_file, "--html", str(out / "review.html")))
    assert res.exit_code == 4
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    assert "writing the review page failed (Read-only file system)" in lines[0]
    assert f"Make {out} writable for this user, or pass another --html" in lines[0]
    monkeypatch.undo()
    assert len(read_report(report).rows) == 1  # the report is whole


def test_screen_html_from_cron_prints_nothing(tmp_path, model_file):
    folder, report, page = tmp_path / "in", tmp_path / "report.csv", tmp_path / "review.html"
    for i in range(3):
        _png(os.fsencode(folder / f"f{i}.png"), i)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for extra in ([], ["--quiet"]):
        r = subprocess.run([sys.executable, "-m", "xraynet.cli.main", *_cmd(folder, report, model_file, "--html",
                                                                            str(page), *extra)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
        assert page.exists() and len(list(files_folder(page).glob("*.jpg"))) == 3


def test_review_command(case, model_file, tmp_path):
    r = runner.invoke(app, ["review", str(case["report"]), "--html", str(case["page"]), "--model", str(model_file),
                            "--folder", str(case["folder"])])
    assert r.exit_code == 0 and r.stderr == "" and r.stdout == ""  # not a terminal: silent
    first = case["page"].read_bytes()
    r = runner.invoke(app, ["review", str(case["report"]), "--html", str(case["page"]), "--model", str(model_file)])
    assert r.exit_code == 0 and case["page"].read_bytes() == first


def _big_report(path: Path, n: int, sha: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.random(n)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow(report_columns(["covid", "normal", "pneumonia"]))
        for i in range(n):
            key = f"ward{i % 40:02d}/2026-11-{i % 28 + 1:02d}/film_{i:05d}.dcm"
            digest = hashlib.sha256(key.encode()).hexdigest()
            if i % 37 == 0:
                w.writerow([key, digest, "error", f"truncated: {key}: the file ends early. Expected 524288 bytes, "
                            "got 1000. Copy the file again from its source.", "", "", "", "", "", "0.3", "", "", "",
                            "xraynet (default.h5)", sha, "0.1.0", "2026-11-29T02:00:00Z", ""])
                continue
            pc = float(p[i])
            rest = (1 - pc) / 2
            w.writerow([key, digest, "ok", "", "covid" if pc > rest else "normal", repr(pc), repr(rest), repr(rest),
                        str(int(pc >= 0.3)), "0.3", "not_frontal" if i % 11 == 0 else "", "2048", "2500",
                        "xraynet (default.h5)", sha, "0.1.0", "2026-11-29T02:00:00Z", ""])


def test_ten_thousand_rows_in_reasonable_time_and_size(tmp_path, model_file):
    report, page = tmp_path / "big.csv", tmp_path / "big.html"
    _big_report(report, 10_000, "0" * 64)
    t0 = time.perf_counter()
    res = write_review(report, page, model_path=model_file)
    seconds = time.perf_counter() - t0
    size = page.stat().st_size
    print(f"\n10,000-row page: {seconds:.2f} s, {size / 1e6:.2f} MB")
    assert res.rows == 10_000 and seconds < 15 and size < 4e6
    text = page.read_text(encoding="utf-8")
    body = text.split('<table id="rows">')[1]
    assert body.count("<tr") == 10_001 and body.count("no thumbnail") == 10_000 and "data:" not in text


def test_names_cannot_hide_or_pass_for_others_on_the_page():
    # A right-to-left override reorders what follows it; a newline looks like a space.
    from xraynet.review.markup import html_text as _text

    assert _text("\u202egnp.exe.png") == "⟨U+202E⟩gnp.exe.png"
    assert _text("new\nline.png") != _text("new line.png")
    assert _text("zero\u200bwidth.png") == "zero⟨U+200B⟩width.png"
    assert _text("é <b>.png") == "é &lt;b&gt;.png"


def test_a_special_file_as_the_page_is_refused(tmp_path):
    import os

    from xraynet.review import check_page_path

    page = tmp_path / "review.html"
    os.mkfifo(page)
    with pytest.raises(ScreenError, match="Expected a regular file or no file"):
        check_page_path(page, tmp_path / "r.csv")


def test_model_notes_never_carry_control_characters_from_the_report():
    """The command prints these notes on stderr: a model_sha256 cell holding an escape sequence
    is shown as visible text."""
    from collections import Counter

    from xraynet.review.page import ModelView, model_notes

    view = ModelView(path="m\x1b[2J.h5", info={"weights_sha256": "ab" * 32}, matches=0,
                     others=Counter({"\x1b]0;owned\x07": 3}))
    (note,) = model_notes(view, ["row"] * 3)
    assert "\x1b" not in note and "\x07" not in note
    assert "⟨U+001B⟩]0;owned⟨U+0007⟩ (3 rows)" in note and note.startswith("m⟨U+001B⟩[2J.h5: not the model")


def test_review_keeps_every_good_row_around_a_damaged_one(tmp_path, capsys):
    # A tester's report with its third row damaged: the page listed 2 of 10 rows, exit 0, silent.
    header = ",".join(report_columns(["covid", "normal"]))
    good = [f"f{i}.png,{'a' * 64},ok,,normal,0.1,0.9,0,0.5,,64,64,m,{'b' * 64},0.1.0,2026-11-30T00:00:00Z,"
            for i in range(10)]
    for damage in (good[2].replace(",ok,", ",okk,"), good[2].rsplit(",", 2)[0], '"' + good[2]):
        path = tmp_path / "r.csv"
        path.write_text("\r\n".join([header, *good[:2], damage, *good[3:]]) + "\r\n")
        rep = read_report(path)
        assert [r.path for r in rep.rows] == [f"f{i}.png" for i in range(10) if i != 2], damage
        assert rep.left_out == 1
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join([header, *good]) + "\r\n").encode())  # a byte order mark
    assert len(read_report(path).rows) == 10


def test_the_page_never_takes_the_reports_lock_or_temp_file(tmp_path):
    from xraynet.review import check_page_path

    report = tmp_path / "r.csv"
    report.write_text(",".join(report_columns(["covid", "normal"])) + "\r\n")
    for name in ("r.csv", "r.csv.lock", "r.csv.tmp"):
        with pytest.raises(ScreenError, match="would replace"):
            check_page_path(tmp_path / name, report)
    check_page_path(tmp_path / "review.html", report)
