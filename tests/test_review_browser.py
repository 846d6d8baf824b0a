"""The review page in a real browser: headless Chromium opens it from disk (file://) with
JavaScript on, takes a screenshot, filters through the address (#filter=...) and the DOM is
checked; every image URL loads; and the page makes no request at all (Chromium's own network
log, with a canary page as the control that the log would show one).

Needs /usr/bin/chromium (Debian: apt-get install -y chromium); skips with that reason otherwise.
Nothing can leave the machine while it runs: host names resolve to nothing and the proxy is a
closed local port."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from xraynet.review import write_review

from helpers import CASES, ERRORS, FLAGGED, NORMAL, WARNED, build_case, make_model, shown_name

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="headless Chromium not found at /usr/bin/chromium: install the Debian "
                                       "package (apt-get install -y chromium) to run the browser checks")
# Where the maintainer looks at the screenshot, when that folder exists (this checkout's ../exp).
EXP = Path(__file__).resolve().parents[2] / "exp"


def chromium(profile: Path, url: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
             "--virtual-time-budget=3000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run([str(CHROMIUM), *flags, *args, url], capture_output=True, text=True, timeout=timeout)


class Dom(HTMLParser):
    """The table rows of a dumped DOM: (path text, classes, hidden), plus the images and scripts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.imgs, self.scripts, self.shown, self.body = [], [], 0, None, {}
        self._films, self._in_tbody, self._td, self._cell, self._text = False, False, 0, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.imgs.append(a)
        if tag == "span" and a.get("id") == "shown":
            self._text = []
        if tag == "table":
            self._films = a.get("id") == "rows"
        if tag == "tbody" and self._films:
            self._in_tbody = True
        if tag == "tr" and self._in_tbody:
            self.rows.append({"class": (a.get("class") or "").split(), "hidden": "hidden" in a, "path": None})
            self._td = 0
        if tag == "td" and self._in_tbody:
            self._td += 1
            if self._td == 3:
                self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1]["path"] = "".join(self._cell)
            self._cell = None
        if tag == "span" and self._text is not None:
            self.shown, self._text = "".join(self._text), None
        if tag == "tbody":
            self._in_tbody = False  # only the films table's body counts (summary tables come first)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._text is not None:
            self._text.append(data)


def dump(profile, page: Path, fragment: str = "") -> Dom:
    r = chromium(profile, page.as_uri() + fragment, "--window-size=1400,1000", "--dump-dom")
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    d = Dom()
    d.feed(r.stdout)
    return d


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    case = build_case(root, make_model(root / "model.h5"))
    write_review(case["report"], case["page"], model_path=root / "model.h5", folder=case["folder"])
    return case["page"]


def test_page_holds_no_address_that_could_leave_the_machine(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?:|//|\bsrc=\"/|\bhref=\"/", text)


def test_screenshot_and_no_request_leaves(page, tmp_path):
    shot, log = tmp_path / "review.png", tmp_path / "net.json"
    r = chromium(tmp_path / "profile", page.as_uri(), "--window-size=1400,1000", "--hide-scrollbars",
                 f"--screenshot={shot}", f"--log-net-log={log}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        gray = im.convert("L")
        # Not a blank page: text, tables and (loaded) thumbnails of noise.
        assert gray.getextrema()[0] < 40 and sum(1 for n in gray.histogram() if n) > 100
    if EXP.is_dir():
        shutil.copyfile(shot, EXP / "review_screenshot.png")
    assert page_requests(log) == []
    # The control: a page that does ask for network addresses shows up in the same log.
    canary = tmp_path / "canary.html"
    canary.write_text('<!DOCTYPE html><html><body><img src="http://192.0.2.1/x.png"></body></html>')
    log2 = tmp_path / "net2.json"
    chromium(tmp_path / "profile2", canary.as_uri(), "--dump-dom", f"--log-net-log={log2}")
    assert page_requests(log2) == ["http://192.0.2.1/x.png"]


def page_requests(log: Path) -> list[str]:
    """URLs of the network requests a page started: Chromium's net log, requests whose initiator is
    an origin (a file: page's is "null"); the browser's own requests say "not an origin"."""
    doc = json.loads(log.read_text())
    start = doc["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in doc["events"] if e["type"] == start and "url" in (e.get("params") or {})
            and e["params"].get("initiator") != "not an origin"]


@pytest.mark.parametrize("fragment, expected", [
    ("", {c[0] for c in CASES}),
    ("#filter=flagged", FLAGGED),
    ("#filter=errors", ERRORS),
    ("#filter=warnings", WARNED),
    ("#filter=label:normal", NORMAL),
    ("#filter=nonsense", {c[0] for c in CASES}),
])
def test_filter_from_the_address_hides_and_shows_rows(page, tmp_path, fragment, expected):
    d = dump(tmp_path / "profile", page, fragment)
    assert len(d.rows) == len(CASES)
    visible = {r["path"] for r in d.rows if not r["hidden"]}
    assert visible == {shown_name(n) for n in expected}
    assert d.shown == f"{len(expected)} of {len(CASES)} rows shown"  # the script ran, under the page's policy
    assert d.scripts == 1 and not any(i.get("src") == "x" for i in d.imgs)
    if expected - ERRORS - {"missing.png"}:
        # Thumbnails of visible rows near the viewport got their address from data-src.
        assert any((i.get("src") or "").startswith("review_files/") for i in d.imgs)


def probe(page: Path, script: str):
    """Run ``script`` after the page's own in a copy of the page beside it (same relative links)
    without the policy that would block it; it leaves its result as JSON in body[data-probe]."""
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text(encoding="utf-8"))
    copy = page.with_name("probe.html")
    copy.write_text(text.replace("</body>", f"<script>{script}</script></body>"), encoding="utf-8")
    try:
        d = dump(page.parent / "profile-probe", copy)
    finally:
        copy.unlink()
    return json.loads(d.body.get("data-probe", "null"))


def test_every_image_address_loads(page):
    """Every thumbnail and overlay the page names loads (the page itself loads them lazily): the
    percent-encoded odd names resolve to their files."""
    result = probe(page, """
var imgs = Array.prototype.slice.call(document.images), left = imgs.length, bad = [];
function done(img, ok) { if (!ok) { bad.push(img.getAttribute("src")); } left -= 1;
  if (left === 0) { document.body.setAttribute("data-probe", JSON.stringify({n: imgs.length, bad: bad})); } }
imgs.forEach(function (img) {
  img.onload = function () { done(img, img.naturalWidth > 0); }; img.onerror = function () { done(img, false); };
  img.src = img.getAttribute("data-src") || img.getAttribute("src"); });""")
    thumbs = sum(1 for c in CASES if c[1] == "ok" and c[0] != "missing.png")
    heat = sum(1 for c in CASES if c[4])
    assert result == {"n": thumbs + heat, "bad": []}


def test_sorting_by_a_column_and_back(page):
    out = probe(page, """
function order() { return Array.prototype.map.call(document.getElementById("rows").tBodies[0].rows,
                                                   function (tr) { return tr.cells[2].textContent; }); }
var b = document.querySelectorAll("#rows th button"), out = {start: order()};
b[0].click(); out.file_up = order(); b[0].click(); out.file_down = order();
b[1].click(); out.p_down = order(); b[1].click(); out.p_up = order();
document.getElementById("reset").click(); out.reset = order();
document.body.setAttribute("data-probe", JSON.stringify(out));""")
    p = {shown_name(c[0]): (c[2] if c[1] == "ok" else float("-inf")) for c in CASES}
    assert sorted(out["start"]) == sorted(p) and out["reset"] == out["start"]
    assert out["file_down"] == out["file_up"][::-1] and out["file_up"] != out["start"]
    assert [p[k] for k in out["p_down"]] == sorted(p.values(), reverse=True)  # errors (no probability) last
    assert [p[k] for k in out["p_up"]] == sorted(p.values())
