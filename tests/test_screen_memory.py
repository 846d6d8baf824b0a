"""Screening streams: peak memory does not grow with the number of files.

Two runs in fresh processes, one on 150 files and one on 3,000, with a tiny
model; the larger run's peak resident size may exceed the smaller one's only
by a small fixed allowance (the report rows and file list themselves). Both
pair decodes in threads, once in worker processes, whose largest peak must
be flat too.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from xraynet.imaging import Preprocessing
from xraynet.model import Model
from xraynet.modelfile import save_model

from helpers import SCREEN_SPEC

ALLOWANCE_MB = 40


def _peak_rss_mb(folder, report, model, pool) -> tuple[float, float]:
    """(peak RSS of the screening process, of its largest worker process or 0), in MB."""
    code = textwrap.dedent(f"""
        import resource
        from xraynet.screening import screen
        s = screen({str(folder)!r}, {str(report)!r}, model_path={str(model)!r}, batch_size=32, workers=2,
                   pool={pool!r})
        assert s.screened == s.files and s.decode_pool == {pool!r}, s
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    main, worker = out.stdout.strip().splitlines()[-1].split()
    return float(main), float(worker)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_peak_memory_is_flat_in_the_number_of_files(tmp_path, pool):
    model = tmp_path / "tiny.h5"
    save_model(model, Model(SCREEN_SPEC, seed=1), classes=["covid", "normal"],
               preprocessing=Preprocessing(image_size=32).to_dict(),
               metadata={"threshold": {"class": "covid", "value": 0.5}})
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, n in ((small, 150), (large, 3000)):
        for i in range(n):
            sub = folder / f"d{i % 20:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    base, base_worker = _peak_rss_mb(small, tmp_path / "small.csv", model, pool)
    big, big_worker = _peak_rss_mb(large, tmp_path / "large.csv", model, pool)
    assert big - base < ALLOWANCE_MB, f"peak RSS {base:.0f} MB for 150 files, {big:.0f} MB for 3000"
    assert big_worker - base_worker < ALLOWANCE_MB, \
        f"a decoding worker's peak RSS {base_worker:.0f} MB for 150 files, {big_worker:.0f} MB for 3000"
