"""The README's "Running nightly" section, run as written.

The crontab line and the systemd service's ExecStart are taken from the
README itself and run with only their paths pointed at a generated folder
(and the installed ``xraynet`` instead of /opt/xraynet/venv/bin/xraynet), the
way cron and systemd would: no terminal, output captured. A quiet night must
print nothing; a night with a broken file prints one line and exits 1.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Running nightly")
    return text[start:text.index("\n## ", start + 1)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


def _xraynet() -> str:
    exe = shutil.which("xraynet") or str(Path(sys.executable).with_name("xraynet"))
    if not os.access(exe, os.X_OK):
        pytest.skip(f"the xraynet command is not installed next to {sys.executable}: pip install -e .")
    return exe


def _films(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        y, x = np.mgrid[0:160, 0:160]
        film = 0.3 + 0.4 * np.exp(-((x - 80) ** 2 + (y - 80) ** 2) / 3000.0) + rng.normal(0, 0.03, (160, 160))
        Image.fromarray((np.clip(film, 0, 1) * 255).astype(np.uint8)).save(folder / f"film{i}.png")


def _cron_job() -> tuple[dict, str]:
    """(the crontab's variables, the command of its one schedule line)."""
    (block,) = _blocks("crontab")
    env, commands = {}, []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if m:
            env[m.group(1)] = m.group(2)
        else:
            commands.append(line.split(None, 5)[5])  # minute hour day month weekday command
    assert len(commands) == 1, commands
    return env, commands[0]


def _service() -> tuple[dict, str, set]:
    """(Environment=, ExecStart=, the exit statuses counted as success) of the service unit."""
    (block,) = [b for b in _blocks("ini") if "[Service]" in b]
    keys = {}
    for line in block.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys[k.strip()] = v.strip()
    env = dict(pair.split("=", 1) for pair in shlex.split(keys["Environment"]))
    ok = {0, *(int(s) for s in keys.get("SuccessExitStatus", "").split())}
    return env, keys["ExecStart"], ok


def _paths(tmp_path: Path) -> dict:
    xrays, reports = tmp_path / "incoming", tmp_path / "reports"
    _films(xrays)
    reports.mkdir()
    return {"XRAYS": str(xrays), "REPORTS": str(reports)}


def test_the_crontab_line_runs_as_written_and_is_silent(tmp_path):
    exe = _xraynet()
    cron_env, command = _cron_job()
    assert set(cron_env) >= {"PATH", "XRAYS", "REPORTS"}
    env = {"HOME": str(tmp_path), "LANG": "C.UTF-8", **cron_env, **_paths(tmp_path)}
    env["PATH"] = f"{Path(exe).parent}:{cron_env['PATH']}"  # the venv the README puts first, here
    quiet = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    reports = Path(env["REPORTS"])
    assert (reports / "screen.csv").is_file() and (reports / "review.html").is_file()
    assert (reports / "screen.csv").read_text().count("film") == 3

    (Path(env["XRAYS"]) / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    night = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert night.returncode == 1 and night.stdout == ""
    assert len(night.stderr.splitlines()) == 1 and "error rows" in night.stderr


def test_the_systemd_service_runs_as_written(tmp_path):
    exe = _xraynet()
    unit_env, exec_start, success = _service()
    paths = _paths(tmp_path)
    assert set(unit_env) == set(paths)
    # systemd's own expansion: ${NAME} becomes the value as one word.
    line = re.sub(r"\$\{([A-Z_]+)\}", lambda m: shlex.quote(paths[m.group(1)]), exec_start)
    argv = shlex.split(line)
    assert argv[0] == "/opt/xraynet/venv/bin/xraynet"
    argv[0] = exe
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path), **paths}
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode in success and (res.stdout, res.stderr) == ("", "")
    assert success == {0, 1}
    assert (Path(paths["REPORTS"]) / "review.html").is_file()


def test_the_timer_runs_nightly_and_catches_up():
    (timer,) = [b for b in _blocks("ini") if "[Timer]" in b]
    assert "OnCalendar=*-*-* 02:30:00" in timer and "Persistent=true" in timer
