"""`xraynet screen --cluster`: batches on Dask workers, the client the one writer. Same report as a local
run, a worker killed mid-run costs nothing (every file exactly once), re-runs skip, unreachable scheduler."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason='dask[distributed] not installed (pip install "xraynet[cluster]"); '
                                          "the dev extra installs it")

from distributed import Client, LocalCluster  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from xraynet.errors import ScreenError  # noqa: E402
from xraynet.screening import screen  # noqa: E402
from xraynet.cli.main import app  # noqa: E402

from helpers import check_whole_report as _check_whole  # noqa: E402
from helpers import random_png as _png  # noqa: E402
from helpers import screen_command  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def dask_cluster():
    """One LocalCluster (two one-thread worker processes) for every test here that needs a running
    cluster; ``--cluster local:N``, which starts its own, is tested once through the CLI."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"NUMBA_NUM_THREADS": "1"}) as cluster:
        yield cluster


def _folder(root: Path, n: int, size: int = 48) -> Path:
    for i in range(n):
        _png(root / ("sub" if i % 3 == 0 else "") / f"f{i:03d}.png", i, size=size)
    (root / "zero.png").write_bytes(b"")  # one error row
    return root


def _same(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        for k in x:
            if k == "screened_at":
                continue
            if k.startswith("p_") and x[k]:
                assert abs(float(x[k]) - float(y[k])) <= 1e-6, (x["path"], k)
            else:
                assert x[k] == y[k], (x["path"], k, x[k], y[k])


def test_cluster_report_equals_local_run(tmp_path, model_file, dask_cluster):
    folder = _folder(tmp_path / "in", 12)
    s_loc = screen(folder, tmp_path / "local.csv", model_path=model_file, batch_size=3)
    s_clu = screen(folder, tmp_path / "cluster.csv", model_path=model_file, batch_size=3,
                   cluster=dask_cluster.scheduler_address)
    _same(_check_whole(tmp_path / "local.csv"), _check_whole(tmp_path / "cluster.csv"))
    assert (s_clu.files, s_clu.screened, s_clu.errors, s_clu.flagged, s_clu.labels_new) == \
           (s_loc.files, s_loc.screened, s_loc.errors, s_loc.flagged, s_loc.labels_new)
    assert s_clu.decode_seconds > 0 and s_clu.network_seconds > 0 and s_clu.exit_code == 1


def test_worker_killed_mid_run_every_file_once(tmp_path, model_file, dask_cluster):
    folder = tmp_path / "in"
    for i in range(40):
        _png(folder / f"f{i:03d}.png", i, size=400)
    report = tmp_path / "r.csv"
    with Client(dask_cluster) as client:
        killed = []

        def progress(done, total):
            if done and not killed:  # the first batch has completed: kill a worker that holds a batch
                busy = [w for w, tasks in client.processing().items() if tasks] or list(client.nthreads())
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        out = {}
        t = threading.Thread(target=lambda: out.update(s=screen(folder, report, model_path=model_file, batch_size=2,
                                                                cluster=dask_cluster.scheduler_address,
                                                                progress=progress)))
        t.start()
        t.join(timeout=120)
        assert not t.is_alive()
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed one: the next test has two
    s = out["s"]
    assert killed and s.exit_code == 0 and s.screened == s.files == 40
    rows = _check_whole(report)
    assert [r["path"] for r in rows] == [f"f{i:03d}.png" for i in range(40)]
    assert all(r["status"] == "ok" for r in rows)


def test_cli_cluster_json_and_rerun_skips(tmp_path, model_file):
    folder, report = _folder(tmp_path / "in", 6), tmp_path / "r.csv"
    (folder / "zero.png").unlink()
    base = ["screen", str(folder), "--out", str(report), "--model", str(model_file), "--batch-size", "2",
            "--cluster", "local:1", "--json"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["files"], doc["screened"], doc["exit_code"]) == (6, 6, 0)
    res = runner.invoke(app, base)  # nothing to do: no cluster is even started
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and (doc["screened"], doc["skipped_unchanged"]) == (0, 6)
    assert len(_check_whole(report)) == 6


def test_unreachable_scheduler_and_bad_address(tmp_path, model_file):
    folder = _folder(tmp_path / "in", 2)
    with pytest.raises(ScreenError, match="cannot reach the Dask scheduler"):
        screen(folder, tmp_path / "r.csv", model_path=model_file, cluster="tcp://127.0.0.1:1", cluster_timeout=2)
    res = runner.invoke(app, ["screen", str(folder), "--out", str(tmp_path / "r2.csv"), "--model", str(model_file),
                              "--cluster", "local:zero"])
    assert res.exit_code == 2 and "Expected local:N" in " ".join(res.output.split())


def test_import_screen_does_not_import_dask():
    code = "import sys, xraynet.screening, xraynet.screening.cluster; assert 'distributed' not in sys.modules " \
           "and 'dask' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_dask_names_the_install_command(tmp_path, model_file, monkeypatch):
    from xraynet.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    folder = _folder(tmp_path / "in", 1)
    with pytest.raises(MissingDependencyError, match=r'pip install "xraynet\[cluster\]"'):
        screen(folder, tmp_path / "r.csv", model_path=model_file, cluster="local:2")
    assert not (tmp_path / "r.csv").exists()  # fails before touching the report
    screen(folder, tmp_path / "r.csv", model_path=model_file)  # without --cluster dask is not needed


def test_heatmaps_written_by_workers(tmp_path, model_file, dask_cluster):
    folder = _folder(tmp_path / "in", 4)
    s = screen(folder, tmp_path / "r.csv", model_path=model_file, batch_size=2, cluster=dask_cluster.scheduler_address,
               threshold=0.0, heatmaps=tmp_path / "heat")
    rows = [r for r in _check_whole(tmp_path / "r.csv") if r["status"] == "ok"]
    assert s.flagged == 4 and all(Path(r["heatmap"]) == tmp_path / "heat" / (r["path"] + ".png") for r in rows)
    assert all(Path(r["heatmap"]).stat().st_size > 0 for r in rows)


@pytest.mark.slow
def test_client_killed_9_with_a_local_cluster_then_rerun_every_file_once(tmp_path, model_file):
    """The cron-safety loop of test_screen.py, shortened, with --cluster local:2: the
    client (the one writer) is killed at seeded random moments; re-runs finish the job."""
    import random
    import time

    from xraynet.decodecache import file_sha256

    folder, report = tmp_path / "in", tmp_path / "r.csv"
    for i in range(40):
        _png(folder / f"d{i % 3}" / f"img{i:03d}.png", i, size=96)
    rng = random.Random(99)
    cluster = ["--cluster", "local:2", "--batch-size", "2"]
    kills = 0
    for attempt in range(6):
        if attempt:
            for name in rng.sample(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")), 6):
                _png(folder / name, 500 + attempt * 10 + len(name), size=96)
        proc = subprocess.Popen(screen_command(folder, report, model_file, *cluster), start_new_session=True)
        # Start-up, cluster start, hashing or appending. On an idle 2-core machine a whole run of
        # these 40 small films takes about 2 s, so later moments would often find it finished.
        time.sleep(rng.uniform(0.5, 2.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the client and the cluster it started
            kills += 1
        proc.wait()
        if report.exists():
            _check_whole(report)
        if kills == 3:
            break
    assert kills >= 2
    rc = None
    for _ in range(3):
        rc = subprocess.run(screen_command(folder, report, model_file, *cluster), timeout=120).returncode
        if rc == 0:
            break
    assert rc == 0
    rows = _check_whole(report)
    current = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert [r["path"] for r in rows] == current
    assert all(r["sha256"] == file_sha256(folder / r["path"]) and r["status"] == "ok" for r in rows)


def test_a_worker_on_another_xraynet_version_stops_the_run(tmp_path, model_file, dask_cluster, monkeypatch):
    """The rows carry the client's xraynet_version; a worker that would decode with another
    pipeline must not write rows under that name."""
    from xraynet.screening import checks, run

    for module in (run, checks):  # the client claims an older version (skip rule, batch settings)
        monkeypatch.setattr(module, "ROW_VERSION", "0.0.1+decode1")
    folder = _folder(tmp_path / "in", 4)
    with pytest.raises(ScreenError) as e:
        screen(folder, tmp_path / "r.csv", model_path=model_file, cluster=dask_cluster.scheduler_address)
    assert "runs xraynet" in str(e.value) and "0.0.1+decode1" in str(e.value)
