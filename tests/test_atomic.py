"""atomic_open: all or nothing."""
import pytest

from xraynet.atomic import atomic_open


def test_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "r.txt"
    with atomic_open(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["r.txt"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]
