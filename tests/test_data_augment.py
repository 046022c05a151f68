"""Augmentation: joint, binary-preserving, fresh angle per sample; input scaling."""

from __future__ import annotations

import pytest
import torch

from bench.data.augment import DEFAULT_SCALING, augment_batch, scale_images


def _pattern(b: int = 16, h: int = 32, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """An asymmetric mask (an off-centre L shape) and an image whose red channel *is* the mask,
    with noise in the other channels: any misalignment of image and mask shows up."""
    mask = torch.zeros(b, 1, h, w, dtype=torch.uint8)
    mask[:, :, 6:24, 8:13] = 1  # the long bar of the L
    mask[:, :, 19:24, 8:22] = 1  # its foot, to the right
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 100, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    img[:, 0] = mask[:, 0] * 255
    return img, mask


def _agreement(img: torch.Tensor, mask: torch.Tensor) -> float:
    return ((img[:, 0] >= 128) == (mask[:, 0] == 1)).float().mean().item()


def test_masks_stay_binary_and_aligned_with_images():
    img, mask = _pattern()
    out_i, out_m, params = augment_batch(
        img,
        mask,
        torch.Generator().manual_seed(0),
        p_hflip=0.5,
        p_vflip=0.5,
        p_rotate=1.0,
        return_params=True,
    )
    assert out_i.dtype == torch.uint8 and out_m.dtype == torch.uint8
    assert out_i.shape == img.shape and out_m.shape == mask.shape
    assert set(out_m.unique().tolist()) <= {0, 1}
    # Every sample moved (rotated by a random angle), so the mask differs from the input ...
    assert all(not torch.equal(out_m[k], mask[k]) for k in range(len(mask)))
    # ... but the image's mask channel moved with it: they agree except on boundary pixels.
    assert _agreement(out_i, out_m) > 0.97
    assert all(out_m[k].sum() > 0.8 * mask[k].sum() for k in range(len(mask)))  # lesion kept
    assert params["hflip"].any() and not params["hflip"].all()


def test_misaligned_augmentation_would_be_caught():
    # The alignment measure is sensitive: the image flipped but not its mask fails it.
    img, mask = _pattern(4)
    assert _agreement(img.flip(-1), mask) < 0.9
    assert _agreement(img, mask) == 1.0


def test_flips_are_exact_and_identity_passes_through():
    img, mask = _pattern(4)
    g = torch.Generator().manual_seed(0)
    out_i, out_m = augment_batch(img, mask, g, p_hflip=1.0, p_vflip=0.0, p_rotate=0.0)
    assert torch.equal(out_i, img.flip(-1)) and torch.equal(out_m, mask.flip(-1))
    out_i, out_m = augment_batch(img, mask, g, p_hflip=1.0, p_vflip=1.0, p_rotate=0.0)
    assert torch.equal(out_i, img.flip(-1, -2)) and torch.equal(out_m, mask.flip(-1, -2))
    out_i, out_m = augment_batch(img, mask, g, p_hflip=0.0, p_vflip=0.0, p_rotate=0.0)
    assert torch.equal(out_i, img) and torch.equal(out_m, mask)
    # Masks given as (B, H, W) come back that way.
    assert augment_batch(img, mask[:, 0], g)[1].shape == mask[:, 0].shape


def test_quarter_turn_is_an_exact_rot90():
    img, mask = _pattern(2)
    out_i, out_m = augment_batch(img, mask, p_hflip=0, p_vflip=0, p_rotate=1, fixed_angle=90.0)
    turned = [torch.rot90(img, k, (-2, -1)) for k in (1, 3)]
    assert any(torch.equal(out_i, t) for t in turned)
    k = 1 if torch.equal(out_i, turned[0]) else 3
    assert torch.equal(out_m, torch.rot90(mask, k, (-2, -1)))


def test_fresh_angle_per_sample_unlike_the_authors_fixed_angle():
    img, mask = _pattern(12)
    g = torch.Generator().manual_seed(3)
    out_i, out_m, params = augment_batch(
        img, mask, g, p_hflip=0, p_vflip=0, p_rotate=1, return_params=True
    )
    angles = params["angle"]
    assert len(set(angles.tolist())) == 12 and ((angles >= 0) & (angles < 360)).all()
    # Same input, different outputs: the angles really differ per sample.
    assert len({tuple(out_i[k].flatten().tolist()) for k in range(12)}) == 12
    assert len({tuple(out_m[k].flatten().tolist()) for k in range(12)}) >= 8  # coarse at 32x32
    # The authors' behaviour (one angle per run), available as an explicit switch.
    out_i, out_m = augment_batch(img, mask, g, p_hflip=0, p_vflip=0, p_rotate=1, fixed_angle=37.0)
    assert all(torch.equal(out_m[k], out_m[0]) for k in range(12))
    assert not torch.equal(out_m[0], mask[0])


def test_probabilities_and_angle_range_follow_the_recipe():
    img = torch.zeros(2000, 1, 4, 4, dtype=torch.uint8)
    _, _, params = augment_batch(
        img, img.clone(), torch.Generator().manual_seed(0), return_params=True
    )
    for key in ("hflip", "vflip"):
        assert 900 < int(params[key].sum()) < 1100  # p = 0.5
    rotated = params["angle"][params["angle"] > 0]
    assert 900 < len(rotated) < 1100
    assert rotated.max() < 360 and rotated.min() >= 0
    assert rotated.mean().item() == pytest.approx(180, abs=15)  # uniform on [0, 360)


def test_seeded_generator_reproduces_the_batch():
    img, mask = _pattern(8)
    a = augment_batch(img, mask, torch.Generator().manual_seed(5))
    b = augment_batch(img, mask, torch.Generator().manual_seed(5))
    c = augment_batch(img, mask, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_non_square_batch_stays_aligned():
    img, mask = _pattern(8, 24, 40)
    out_i, out_m = augment_batch(img, mask, torch.Generator().manual_seed(2), p_rotate=1)
    assert _agreement(out_i, out_m) > 0.97 and set(out_m.unique().tolist()) <= {0, 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_gpu_and_matches_the_cpu():
    img, mask = _pattern(8)
    cpu = augment_batch(img, mask, torch.Generator().manual_seed(0))
    gpu = augment_batch(img.cuda(), mask.cuda(), torch.Generator().manual_seed(0))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.equal(gpu[1].cpu(), cpu[1])
    assert (gpu[0].cpu().int() - cpu[0].int()).abs().max() <= 1


def test_bad_shapes_are_rejected():
    img, mask = _pattern(2)
    with pytest.raises(ValueError, match="masks of shape"):
        augment_batch(img, mask[:1])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment_batch(img[0], mask[0])


def test_scale_images_modes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(20, 200, (3, 3, 8, 8), dtype=torch.uint8, generator=gen)
    x[2] = 77  # a constant image
    unit = scale_images(x, "unit")
    assert unit.dtype == torch.float32 and torch.allclose(unit, x.float() / 255)
    mm = scale_images(x, "minmax255")
    for k in range(2):  # per image over all channels: min -> 0, max -> 255, affine in between
        assert mm[k].min().item() == 0 and mm[k].max().item() == pytest.approx(255)
        lo, hi = x[k].min().float(), x[k].max().float()
        assert torch.allclose(mm[k], (x[k].float() - lo) * 255 / (hi - lo), atol=1e-3)
    assert torch.equal(mm[2], torch.zeros_like(mm[2]))
    assert torch.allclose(scale_images(x[0]), mm[0])  # one (C, H, W) image
    assert DEFAULT_SCALING == "minmax255"  # the authors feed [0, 255]
    with pytest.raises(ValueError, match="unit"):
        scale_images(x, "zscore")


@pytest.mark.parametrize("mode", ["unit", "minmax255"])
def test_scale_images_leaves_a_float_input_untouched(mode):
    x = torch.rand(2, 3, 8, 8) * 255
    before = x.clone()
    out = scale_images(x, mode)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert out.dtype == torch.float32 and float(out.max()) <= 255.0 + 1e-3
