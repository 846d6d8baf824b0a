"""Augmentation: deterministic with the seed, small, and the identity when off."""
import numpy as np
import pytest

from xraynet.augment import Augmentation, augment_batch
from xraynet.errors import SpecError


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 24, 20)).astype(np.float32)


def test_off_is_identity():
    x = _batch()
    np.testing.assert_allclose(augment_batch(x, np.random.default_rng(1), Augmentation.off()), x, atol=1e-6)


def test_same_seed_same_draws_and_changes_images():
    x = _batch()
    a = augment_batch(x, np.random.default_rng(5), Augmentation())
    b = augment_batch(x, np.random.default_rng(5), Augmentation())
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.allclose(a, x)


def test_pure_shift_moves_content():
    x = np.zeros((1, 21, 21), np.float32)
    x[0, 10, 10] = 1.0
    aug = Augmentation(rotation_deg=0, shift=0.2, zoom=0, brightness=0, contrast=0)
    y = augment_batch(x, np.random.default_rng(3), aug)
    # all mass of the bright pixel stays (bilinear spreads it) and its centre moves
    assert y.sum() == pytest.approx(1.0, abs=1e-5)
    cy, cx = np.unravel_index(np.argmax(y[0]), y[0].shape)
    assert (cy, cx) != (10, 10)


def test_out_of_range_is_refused():
    with pytest.raises(SpecError, match="rotation_deg"):
        Augmentation(rotation_deg=400)


def test_warp_conventions():
    # Pin what the Pillow affine transform is asked for: rotation direction about the frame centre,
    # whole-pixel shifts, and the fill of pixels brought in from outside.
    from xraynet.augment import _warp

    img = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_allclose(_warp(img, np.pi / 2, 1.0, 0.0, 0.0, fill=-1.0), np.rot90(img), atol=1e-4)
    moved = _warp(img, 0.0, 1.0, 0.0, 2.0, fill=-1.0)
    np.testing.assert_array_equal(moved[:, 2:], img[:, :-2])
    np.testing.assert_array_equal(moved[:, :2], -1.0)
