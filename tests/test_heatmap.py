"""Grad-CAM overlay PNGs."""
import numpy as np
from PIL import Image

from xraynet.heatmap import colourise, overlay, write_overlay_png


def test_no_evidence_leaves_the_film_untouched_and_evidence_colours_it():
    img = np.linspace(-2, 2, 40 * 30, dtype=np.float32).reshape(40, 30)
    cam = np.zeros((5, 4), np.float32)
    out = overlay(img, cam)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # still gray
    cam[2, 1] = 1.0
    hot = overlay(img, cam)
    assert not (hot[..., 0] == hot[..., 2]).all()  # coloured where the map is high


def test_colour_scale_ends():
    ends = colourise(np.array([[0.0, 1.0]]))
    assert tuple(ends[0, 0]) == (20, 40, 160) and tuple(ends[0, 1]) == (255, 235, 60)


def test_write_is_a_png_and_leaves_no_temp_file(tmp_path):
    p = write_overlay_png(tmp_path / "sub" / "film.png", np.random.default_rng(0).random((32, 32)),
                          np.random.default_rng(1).random((4, 4)))
    assert Image.open(p).size == (32, 32)
    assert [f.name for f in p.parent.iterdir()] == ["film.png"]
