"""Screening's decoding pool (xraynet.screening.decodepool): worker processes write the report that
worker threads write -- rows, order, error rows, library warnings -- a dead worker falls back to
threads, and workers exit when the process that started them is killed."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xraynet.errors import ScreenError
from xraynet.imaging import Preprocessing
from xraynet.screening import ImageFile, decode_image, screen
from xraynet.screening import decodepool
from xraynet.screening.decodepool import DecodePool, pool_kind

from helpers import random_png, read_report_rows, synthetic_film, write_film


def _png16_with_time_chunk(path: Path) -> Path:
    """A 16-bit PNG with a malformed tIME chunk: libpng (through imagecodecs) warns about it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    img = (np.random.default_rng(2).random((40, 40)) * 4095).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in img)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 0, 0, 0, 0))
                     + chunk(b"tIME", b"\x07\xe4\x0d\x20\x19\x3c\x3c") + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _mixed_folder(root: Path) -> Path:
    """PNG, 16-bit PNG, JPEG (large enough to be decoded at reduced size), DICOM, files that give
    warnings (nearly_uniform, tiny, a libpng warning) and files that give error rows."""
    rng = np.random.default_rng(5)
    root.mkdir()
    for i in range(6):
        film = synthetic_film(rng, opacity=bool(i % 2))
        write_film(root / f"film{i}", film, ["png", "png16", "rgb", "dicom", "png", "rgb"][i])
    big = np.kron(synthetic_film(rng, opacity=True), np.ones((12, 16)))  # 480 x 640
    Image.fromarray((big * 255).astype(np.uint8)).save(root / "big.jpg", quality=90)
    Image.fromarray(np.full((50, 50), 120, np.uint8)).save(root / "blank.png")
    random_png(root / "sub" / "tiny.png", 3, size=20)
    _png16_with_time_chunk(root / "warns.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not a jpeg")
    data = (root / "big.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    return root


def _without_times(report: Path) -> list[dict]:
    rows = read_report_rows(report)
    for r in rows:
        r.pop("screened_at")
    return rows


def test_processes_write_the_report_threads_write(tmp_path, model_file):
    folder = _mixed_folder(tmp_path / "in")
    s_t = screen(folder, tmp_path / "t.csv", model_path=model_file, workers=2, batch_size=4, pool="threads")
    s_p = screen(folder, tmp_path / "p.csv", model_path=model_file, workers=2, batch_size=4, pool="processes")
    assert (s_t.decode_pool, s_p.decode_pool) == ("threads", "processes")
    assert s_t.warnings == s_p.warnings == []
    rows = _without_times(tmp_path / "p.csv")
    assert rows == _without_times(tmp_path / "t.csv")
    by = {r["path"]: r for r in rows}
    assert [r["path"] for r in rows] == sorted(by)
    assert {by[k]["error"].split(":")[0] for k in ("empty.png", "text.jpg", "cut.jpg")} == \
           {"empty", "not_an_image", "truncated"}
    assert "nearly_uniform" in by["blank.png"]["warnings"] and "tiny" in by["sub/tiny.png"]["warnings"]
    assert "decoder_warning" in by["warns.png"]["warnings"]
    assert (by["big.jpg"]["width"], by["big.jpg"]["height"]) == ("640", "480")  # the stored size
    assert (s_p.errors, s_p.screened, s_p.exit_code) == (3, len(rows), 1)

    # Resumable as before: a second run keeps every row, whichever pool wrote it.
    again = screen(folder, tmp_path / "p.csv", model_path=model_file, workers=2, pool="processes")
    assert (again.screened, again.skipped_unchanged, again.decode_pool) == (0, len(rows), "")


def test_decoded_files_cross_the_process_boundary_unchanged(tmp_path):
    folder = _mixed_folder(tmp_path / "in")
    files = [ImageFile(p.name, str(p)) for p in sorted(folder.iterdir()) if p.is_file()]
    prep = Preprocessing(image_size=32)
    with DecodePool(2, "processes") as pool:
        remote = [pool.result(pending) for pending in [pool.submit(f, prep) for f in files]]
    assert pool.kind == "processes" and pool.warnings == []
    for f, got in zip(files, remote):
        want = decode_image(f, prep)
        assert (got.meta, got.error) == (want.meta, want.error), f.key
        if want.pixels is None:
            assert got.pixels is None
        else:
            assert got.pixels.dtype == np.float32 and got.pixels.shape == (32, 32)
            np.testing.assert_array_equal(got.pixels, want.pixels)
    assert any(d.error and d.error.startswith("empty: empty.png: ") for d in remote)
    assert any(d.meta and any(w.startswith("decoder_warning") for w in d.meta[2]) for d in remote)


def test_a_dead_worker_process_falls_back_to_threads(tmp_path):
    paths = [random_png(tmp_path / f"f{i}.png", i, size=64) for i in range(12)]
    files = [ImageFile(p.name, str(p)) for p in paths]
    prep = Preprocessing(image_size=32)
    with DecodePool(2, "processes") as pool:
        first = [pool.result(p) for p in [pool.submit(f, prep) for f in files[:4]]]
        victim = next(iter(pool._executor._processes))  # a worker process, as the OOM killer would pick
        os.kill(victim, signal.SIGKILL)
        # The executor learns of the death from its manager thread; until then the other worker
        # may take every remaining file and nothing fails. Wait for it, so that the fallback
        # is what is tested (about 1 run in 10 raced past it before).
        deadline = time.monotonic() + 60
        while not pool._executor._broken and time.monotonic() < deadline:
            time.sleep(0.005)
        rest = [pool.result(p) for p in [pool.submit(f, prep) for f in files[4:]]]
    assert pool.kind == "threads" and len(pool.warnings) == 1
    assert "a worker process stopped" in pool.warnings[0] and "Expected 2 worker processes" in pool.warnings[0]
    for f, got in zip(files, first + rest):
        np.testing.assert_array_equal(got.pixels, decode_image(f, prep).pixels)


_ORPHAN = """
import sys, time
from xraynet.imaging import Preprocessing
from xraynet.screening import ImageFile
from xraynet.screening.decodepool import DecodePool

if __name__ == "__main__":
    pool = DecodePool(2, "processes")
    f = ImageFile("f.png", sys.argv[1])
    [pool.result(p) for p in [pool.submit(f, Preprocessing(image_size=32)) for _ in range(8)]]
    print(" ".join(str(pid) for pid in pool._executor._processes), flush=True)
    time.sleep(60)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_screening_process_is_killed(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_ORPHAN)
    png = random_png(tmp_path / "f.png", 1, size=40)
    proc = subprocess.Popen([sys.executable, str(script), str(png)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert workers and all(_running(pid) for pid in workers)
    finally:
        proc.kill()  # kill -9: no cleanup of its own runs
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers), "worker processes outlived the killed screening run"


def test_pool_kind(monkeypatch):
    monkeypatch.setattr(decodepool, "usable_cores", lambda: 16)
    assert pool_kind("auto", 16, 1000) == "processes"
    assert pool_kind("auto", 3, decodepool.MIN_PROCESS_FILES) == "processes"
    assert pool_kind("auto", 3, decodepool.MIN_PROCESS_FILES - 1) == "threads"  # start-up would not pay
    assert pool_kind("auto", 2, 1000) == "threads" and pool_kind("auto", 1, 1000) == "threads"
    assert pool_kind("threads", 16, 1000) == "threads" and pool_kind("processes", 1, 1) == "processes"
    monkeypatch.setattr(decodepool, "usable_cores", lambda: 2)
    assert pool_kind("auto", 4, 1000) == "threads"


def test_bad_pool_is_a_usage_error(tmp_path, model_file):
    (tmp_path / "in").mkdir()
    with pytest.raises(ScreenError) as ei:
        screen(tmp_path / "in", tmp_path / "r.csv", model_path=model_file, pool="fork")
    msg = str(ei.value)
    assert msg.startswith("pool: invalid. Expected one of auto, threads, processes, got 'fork'.")
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(ScreenError, match="Expected 'threads' or 'processes', got 'auto'"):
        DecodePool(2, "auto")


_UNGUARDED = """
import sys
from xraynet.screening import screen

s = screen(sys.argv[1], sys.argv[2], model_path=sys.argv[3], workers=2, pool="processes", on_lock="wait")
print(s.decode_pool, s.screened, len(s.warnings))
"""


def test_an_unguarded_script_falls_back_to_threads_instead_of_deadlocking(tmp_path, model_file):
    # spawn runs the script's top level again in each worker: that screen() call would wait for the
    # lock the real run holds while the real run waits for the worker. It must fail at once instead.
    folder = tmp_path / "in"
    for i in range(6):
        random_png(folder / f"f{i}.png", i, size=48)
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    out = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "r.csv"), str(model_file)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["threads", "6", "1"]
    assert "called while a worker process starts" in out.stderr  # the workers' own error
    assert len(read_report_rows(tmp_path / "r.csv")) == 6


def test_cli_pool_option(tmp_path, model_file):
    import json

    from typer.testing import CliRunner

    from xraynet.cli.main import app

    folder = tmp_path / "in"
    for i in range(3):
        random_png(folder / f"f{i}.png", i, size=48)
    base = ["screen", str(folder), "--model", str(model_file), "--json"]
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "p.csv"), "--pool", "processes"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["decode_pool"] == "processes"
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "a.csv")])  # auto, 3 files: threads
    assert res.exit_code == 0 and json.loads(res.stdout)["decode_pool"] == "threads"
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "x.csv"), "--pool", "fork"])
    assert res.exit_code == 2 and not (tmp_path / "x.csv").exists()


class _RecordingBackend:
    def __init__(self, threads):
        self.threads, self.calls = threads, []

    def set_threads(self, threads):
        before, self.threads = self.threads, threads
        self.calls.append(threads)
        return before


class _Result:
    def __init__(self, network_seconds, decode_seconds):
        self.network_seconds, self.decode_seconds = network_seconds, decode_seconds


@pytest.mark.parametrize("cores, network_cpu_s, decode_s, expected", [
    (2, 0.05, [0.013] * 32, 1),   # the bundled model on 2 cores: a tenth of the work -> 1 thread
    (16, 0.05, [0.013] * 32, 2),  # the same on 16 cores
    (2, 0.4, [0.002] * 32, 2),    # tiny films, a network that dominates: both cores
    (8, 0.0, [0.0] * 4, 1),       # nothing measured yet
])
def test_network_threads_follow_the_network_share_of_the_work(cores, network_cpu_s, decode_s, expected):
    bk = _RecordingBackend(threads=cores)
    share = decodepool.NetworkThreads(bk, cores)
    assert bk.threads == 1  # the first batch on one thread
    for _ in range(4):  # a batch's network time: its CPU time spread over the threads it had
        share.update(_Result(network_cpu_s / share.threads, decode_s))
    assert share.threads == bk.threads == expected
    share.restore()
    assert bk.threads == cores  # the caller's count is back


def test_screening_puts_the_backend_threads_back(tmp_path, model_file):
    from xraynet.backends import get_backend

    folder = tmp_path / "films"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_film(folder / f"film{i}.png", synthetic_film(rng, opacity=i == 1), "png")
    bk = get_backend("cpu")
    before = bk.set_threads(2)
    try:
        screen(folder, tmp_path / "report.csv", model_path=model_file, workers=1, pool="threads")
        assert bk.set_threads(2) == 2
    finally:
        bk.set_threads(before)
