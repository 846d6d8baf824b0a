"""The review page's only style and script, inline, and the
Content-Security-Policy that allows exactly these two by their SHA-256
and nothing else but the page's own images."""
from __future__ import annotations

import base64
import hashlib

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#111;background:#fafafa}
h1{font-size:1.4em;margin:.8em 0 .2em}h2{font-size:1.15em;margin:1.2em 0 .4em}
.note{color:#555;margin:.2em 0}.warn{background:#fff3cd;border:1px solid #e0b000;padding:.4em .8em}
.cols{display:flex;flex-wrap:wrap;gap:2em}.cols section{flex:1 1 22em}
summary{cursor:pointer;color:#1a4d8f;margin:.5em 0}
table.kv{border-collapse:collapse}table.kv th,table.kv td{text-align:left;vertical-align:top;padding:2px 8px;
border-bottom:1px solid #ddd}dl{margin:0}dt{font-weight:600}dd{margin:0 0 .2em 1em}
#rows{border-collapse:collapse;width:100%;background:#fff}
#rows th{position:sticky;top:0;background:#eee;text-align:left;padding:4px;z-index:1}
#rows td{border-top:1px solid #ddd;padding:3px 6px;vertical-align:middle}
#rows td.p{word-break:break-all;max-width:28em}#rows td.n{text-align:right;font-variant-numeric:tabular-nums}
#rows img{width:96px;height:96px;object-fit:contain;background:#000;display:block}
tr.fl td:first-child{box-shadow:inset 5px 0 #c62828}tr.fl .r{color:#c62828;font-weight:700}
tr.er{background:#fdf2f2}tr.er .r{color:#8a1c1c}.ph{display:inline-block;width:96px;color:#888;font-size:12px;
text-align:center}th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0}
th button::after{content:" \\2195";color:#999}.controls{margin:.5em 0;display:flex;gap:1em;align-items:center}
"""

# Plain ES5, no innerHTML: the filter sets `hidden`, the sort moves the rows it was given. Images carry
# their URL in data-src: the first 40 rows shown get src at once, the others when they come near the
# viewport. Chromium ignores loading="lazy" on file: pages (only http(s) images are deferred), and
# 10,000 eager thumbnails took 20 s to open on the 2-core machine.
JS = """
(function () {
  "use strict";
  var table = document.getElementById("rows"), tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows), select = document.getElementById("filter");
  var shown = document.getElementById("shown"), last = {k: -1, desc: false};
  function keep(tr, f) {
    if (f === "flagged") { return tr.classList.contains("fl"); }
    if (f === "errors") { return tr.classList.contains("er"); }
    if (f === "warnings") { return tr.classList.contains("wa"); }
    if (f.indexOf("label:") === 0) { return tr.getAttribute("data-l") === f.slice(6); }
    return true;
  }
  function apply() {
    var f = select.value, n = 0;
    rows.forEach(function (tr) { var k = keep(tr, f); tr.hidden = !k; if (k) { n += 1; } });
    shown.textContent = n + " of " + rows.length + " rows shown";
    first(40);
  }
  function load(img) {
    if (img.hasAttribute("data-src")) { img.src = img.getAttribute("data-src"); img.removeAttribute("data-src"); }
  }
  function first(n) {
    var live = tbody.rows;
    for (var i = 0, k = 0; i < live.length && k < n; i += 1) {
      if (!live[i].hidden) { k += 1; Array.prototype.forEach.call(live[i].querySelectorAll("img[data-src]"), load); }
    }
  }
  function fromHash() {
    var m = /(?:^#|&)filter=([^&]*)/.exec(location.hash), f = "all";
    try { if (m) { f = decodeURIComponent(m[1]); } } catch (e) { f = "all"; }
    var known = Array.prototype.some.call(select.options, function (o) { return o.value === f; });
    select.value = known ? f : "all";
    apply();
  }
  function place(list) {
    var frag = document.createDocumentFragment();
    list.forEach(function (tr) { frag.appendChild(tr); });
    tbody.appendChild(frag);
  }
  function sortBy(k, num) {
    var desc = last.k === k ? !last.desc : num;
    last = {k: k, desc: desc};
    var keyed = rows.map(function (tr, i) {
      var t = tr.cells[k].textContent, v = num ? parseFloat(t) : t;
      return {v: num && isNaN(v) ? -Infinity : v, i: i, tr: tr};
    });
    keyed.sort(function (a, b) {
      var c = num ? (a.v < b.v ? -1 : a.v > b.v ? 1 : 0) : String(a.v).localeCompare(String(b.v));
      return (desc ? -c : c) || a.i - b.i;
    });
    place(keyed.map(function (e) { return e.tr; }));
    first(40);
  }
  select.addEventListener("change", function () { location.hash = "filter=" + encodeURIComponent(select.value); });
  window.addEventListener("hashchange", fromHash);
  Array.prototype.forEach.call(table.querySelectorAll("th button"), function (b) {
    b.addEventListener("click", function () { sortBy(+b.getAttribute("data-k"), b.hasAttribute("data-n")); });
  });
  document.getElementById("reset").addEventListener("click", function () {
    last = {k: -1}; place(rows); first(40);
  });
  fromHash();
  var lazy = Array.prototype.slice.call(table.querySelectorAll("img[data-src]"));
  if (!("IntersectionObserver" in window)) { lazy.forEach(load); return; }
  var seen = new IntersectionObserver(function (entries) {
    entries.forEach(function (en) { if (en.isIntersecting) { seen.unobserve(en.target); load(en.target); } });
  }, {rootMargin: "1000px 0px"});
  lazy.forEach(function (img) { seen.observe(img); });
}());
"""


def _csp_hash(text: str) -> str:
    """The policy's ``'sha256-...'`` source for an inline script or style."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# Nothing may be fetched but the page's own images (thumbnails, heatmaps); only the inline script and
# style above run. file: covers a page opened from disk, 'self' one served from a folder.
CSP = (f"default-src 'none'; img-src 'self' file:; style-src {_csp_hash(CSS)}; script-src {_csp_hash(JS)}; "
        "base-uri 'none'; form-action 'none'")
