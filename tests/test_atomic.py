"""atomic_open / write_atomic: all or nothing, durable (file and folder synced), no temp file left."""
import os

import pytest

from xraynet.atomic import atomic_open


def test_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "r.txt"
    with atomic_open(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["r.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o644 & ~umask  # as open() would create it


def test_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_one_durable_write_syncs_file_and_folder(tmp_path, monkeypatch):
    import stat

    from xraynet.atomic import write_atomic

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_IFMT(os.fstat(fd).st_mode)) or real(fd))
    target = tmp_path / "r.csv"
    target.write_text("old")
    write_atomic(target, b"new", tmp=tmp_path / "r.csv.tmp")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    assert synced == [stat.S_IFREG, stat.S_IFDIR]  # the data, then the rename
    with atomic_open(tmp_path / "x.txt", "w") as fh:
        fh.write("x")
    assert synced[2:] == [stat.S_IFREG, stat.S_IFDIR]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_disk_full_at_any_step_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    import errno

    from xraynet.atomic import write_atomic

    target = tmp_path / "r.csv"
    target.write_text("old")

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    for tmp in (tmp_path / "r.csv.tmp", None):
        with pytest.raises(OSError) as e:
            write_atomic(target, b"new" * 1000, tmp=tmp)
        assert e.value.errno == errno.ENOSPC
        assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_mode_follows_the_umask_like_open(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_open(tmp_path / "private.csv", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "private.csv").stat().st_mode & 0o777 == 0o640


def test_a_name_near_the_longest_allowed_is_written(tmp_path):
    # A tester's 240- to 250-byte page names failed ("File name too long"): the temp name adds 18.
    from xraynet.atomic import leftover_temps, write_atomic

    for n in (236, 245, 255):
        path = tmp_path / ("p" * (n - 5) + ".html")
        write_atomic(path, b"page")
        assert path.read_bytes() == b"page" and not leftover_temps(path)
