"""Batched train-time augmentation and input scaling, on whatever device the batch is on.

The recipe (docs/protocol.md): horizontal flip p=0.5, vertical flip p=0.5, rotation
p=0.5 by an angle in [0, 360), applied jointly to image and mask. Unlike the
authors' pipeline, each rotated sample gets a fresh angle (theirs is drawn once
when the transform is built); ``fixed_angle`` reproduces their behaviour.

All three operations are folded into one affine sampling grid per sample (a flip
is a sign change of an axis), so a batch costs one ``grid_sample`` for the
images (bilinear) and one for the masks (nearest, so they stay binary). Samples
that draw no transform are passed through bit-exact.
torchvision's ``v2.functional.rotate`` takes a single angle per call, so a
per-sample angle would need a Python loop over the batch; hence the grid.

Two implementations of the same draws: on the CPU a short Python loop over the
flagged samples (fastest there); on a GPU (``sync_free``) the whole batch in
one pass without reading anything back to the host: the random draws and the
affine matrices are made on the generator's device (the CPU), copied to the GPU
in one non-blocking transfer, then one ``grid_sample`` per tensor for every
sample and ``torch.where`` picks rotated, flipped or untouched per sample. A
per-sample loop there costs ~1,000 small kernel launches and ~100 host reads
(``nonzero``, ``tolist``, Python ``if`` on GPU booleans) per batch of 128.
Both give the same samples for the same generator (rotated pixels up to
floating-point rounding of the matrices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_SCALING", "SCALINGS", "augment_batch", "scale_images", "training_batch"]

SCALINGS = ("minmax255", "unit")
#: The recipe's default: the authors' normalisation ends in a per-image min-max
#: rescale to [0, 255], so their networks see [0, 255] inputs.
DEFAULT_SCALING = "minmax255"


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (CPU by default) and move: the draws are tiny,
    # and a CPU generator keeps results identical whether the batch is on CPU or GPU.
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gen_dev).to(device)


def augment_batch(
    images_u8: torch.Tensor,
    masks_u8: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    p_hflip: float = 0.5,
    p_vflip: float = 0.5,
    p_rotate: float = 0.5,
    fixed_angle: float | None = None,
    return_params: bool = False,
    sync_free: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Flip / flip / rotate a batch jointly; returns ``(images, masks)`` in the input dtypes.

    ``images_u8``: ``(B, C, H, W)`` (uint8 or float), ``masks_u8``: ``(B, 1, H, W)`` or
    ``(B, H, W)`` with values {0, 1} (or {0, 255}); the output masks keep exactly the
    input values (nearest sampling; rotated-in corners are 0 in both, as torchvision's
    ``rotate`` fills them). ``fixed_angle`` (degrees) makes every rotated sample use one
    angle, like the authors' transform. With ``return_params`` a third item holds the
    per-sample draws: ``hflip``, ``vflip`` (bool) and ``angle`` (degrees, 0 where not
    rotated). ``sync_free`` (default: when the batch is not on the CPU) selects the
    batched path without host reads (see the module docstring).
    """
    if images_u8.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images_u8.shape)}")
    squeeze = masks_u8.ndim == 3
    masks = masks_u8.unsqueeze(1) if squeeze else masks_u8
    if (
        masks.ndim != 4
        or masks.shape[0] != images_u8.shape[0]
        or masks.shape[-2:] != images_u8.shape[-2:]
    ):
        raise ValueError(
            f"masks of shape {tuple(masks_u8.shape)} do not match images of shape "
            f"{tuple(images_u8.shape)}"
        )
    b, _, h, w = images_u8.shape
    dev = images_u8.device
    if sync_free is None:
        sync_free = dev.type != "cpu"
    if sync_free:
        out_img, out_msk, params = _augment_sync_free(
            images_u8, masks, generator, p_hflip, p_vflip, p_rotate, fixed_angle
        )
        if squeeze:
            out_msk = out_msk.squeeze(1)
        return (out_img, out_msk, params) if return_params else (out_img, out_msk)
    hflip = _rand(b, generator, dev) < p_hflip
    vflip = _rand(b, generator, dev) < p_vflip
    rotate = _rand(b, generator, dev) < p_rotate
    if fixed_angle is None:
        angle = _rand(b, generator, dev) * 360.0
    else:
        angle = torch.full((b,), float(fixed_angle), device=dev)
    angle = torch.where(rotate, angle, torch.zeros_like(angle))
    params = {"hflip": hflip, "vflip": vflip, "angle": angle}

    # Identity samples stay untouched (bit-exact, no resampling cost); flip-only
    # samples use torch.flip; only rotated ones go through grid_sample. A short
    # Python loop over flagged samples beats masked whole-batch ops on the CPU.
    out_img = images_u8.clone()
    out_msk = masks.clone()
    flip_only = (hflip | vflip) & ~rotate
    for i in flip_only.nonzero().flatten().tolist():
        dims = [d for d, f in ((-1, hflip[i]), (-2, vflip[i])) if f]
        out_img[i] = images_u8[i].flip(dims)
        out_msk[i] = masks[i].flip(dims)
    if rotate.any():
        idx = rotate.nonzero().squeeze(1)
        theta = _affine(angle[idx], hflip[idx], vflip[idx], h, w)
        grid = _grid(theta, h, w)
        # index_select, not x[idx]: on the CPU advanced indexing is ~20x slower.
        rot = F.grid_sample(
            images_u8.index_select(0, idx).float(),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        msk = F.grid_sample(
            masks.index_select(0, idx).float(),
            grid,
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        )
        if not images_u8.is_floating_point():
            # Bilinear weights are convex and the padding is 0, so values stay in [0, 255];
            # + 0.5 then the truncating cast in copy_ rounds to nearest.
            rot.add_(0.5)
        for k, i in enumerate(idx.tolist()):  # copy_ casts in place (index_put would not)
            out_img[i].copy_(rot[k])
            out_msk[i].copy_(msk[k])
    if squeeze:
        out_msk = out_msk.squeeze(1)
    return (out_img, out_msk, params) if return_params else (out_img, out_msk)


def _augment_sync_free(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator | None,
    p_hflip: float,
    p_vflip: float,
    p_rotate: float,
    fixed_angle: float | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`augment_batch` for a batch on a GPU: no host read, a fixed number of kernels.

    The draws happen in the same order as on the CPU path (hflip, vflip, rotate, angle),
    so one generator gives the same samples on either path.
    """
    b, _, h, w = images.shape
    dev = images.device
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    hflip = torch.rand(b, generator=generator, device=gen_dev) < p_hflip
    vflip = torch.rand(b, generator=generator, device=gen_dev) < p_vflip
    rotate = torch.rand(b, generator=generator, device=gen_dev) < p_rotate
    if fixed_angle is None:
        angle = torch.rand(b, generator=generator, device=gen_dev) * 360.0
    else:
        angle = torch.full((b,), float(fixed_angle), device=gen_dev)
    angle = torch.where(rotate, angle, torch.zeros_like(angle))
    theta = _affine(angle, hflip, vflip, h, w)  # flips folded in
    # One (b, 10) block: 6 matrix entries, 3 flags, the angle; one copy to the device.
    packed = torch.cat(
        [theta.reshape(b, 6), torch.stack([hflip, vflip, rotate], 1).to(theta), angle[:, None]],
        dim=1,
    )
    if packed.device != dev:
        if dev.type == "cuda" and packed.device.type == "cpu":
            packed = packed.pin_memory()  # a truly asynchronous copy
        packed = packed.to(dev, non_blocking=True)
    theta = packed[:, :6].reshape(b, 2, 3)
    hf, vf, rot = (packed[:, k] > 0.5 for k in (6, 7, 8))
    grid = _grid(theta, h, w)
    turned = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if not images.is_floating_point():
        turned.add_(0.5)  # round to nearest in the truncating cast below (values in [0, 255])
    turned_msk = F.grid_sample(
        masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )

    def pick(x: torch.Tensor, turned_x: torch.Tensor) -> torch.Tensor:
        # exact flips (no resampling) for samples that flip but do not rotate
        x = torch.where(hf.view(b, 1, 1, 1), x.flip(-1), x)
        x = torch.where(vf.view(b, 1, 1, 1), x.flip(-2), x)
        return torch.where(rot.view(b, 1, 1, 1), turned_x.to(x.dtype), x)

    params = {"hflip": hf, "vflip": vf, "angle": packed[:, 9]}
    return pick(images, turned), pick(masks, turned_msk), params


def _grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The ``(n, H, W, 2)`` sampling grid of ``F.affine_grid(theta, ..., align_corners=False)``.

    Built from separable row / column terms: one full-size add per coordinate, where
    ``affine_grid`` runs a K=3 batched matmul that is several times slower on the CPU.
    """
    dev, dt = theta.device, theta.dtype
    xs = ((torch.arange(w, device=dev, dtype=dt) * 2 + 1) / w - 1).view(1, 1, w)
    ys = ((torch.arange(h, device=dev, dtype=dt) * 2 + 1) / h - 1).view(1, h, 1)
    t = theta.view(-1, 2, 3, 1, 1)
    grid = torch.empty(theta.shape[0], h, w, 2, device=dev, dtype=dt)
    for k in range(2):
        torch.add(t[:, k, 0] * xs + t[:, k, 2], t[:, k, 1] * ys, out=grid[..., k])
    return grid


def _affine(
    angle_deg: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Per-sample 2x3 matrices mapping output to input normalised coordinates.

    Output pixel p samples input at F R^-1 p (flip, then rotate, applied to the
    image); normalised coordinates are scaled by the aspect ratio so that a
    rotation of a non-square image stays a rotation in pixels.
    """
    a = angle_deg * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    sx = torch.where(hflip, -1.0, 1.0).to(cos)
    sy = torch.where(vflip, -1.0, 1.0).to(cos)
    r = w / h  # x_pix = x_n * w/2, y_pix = y_n * h/2
    # Inverse rotation in pixel space, expressed in normalised coordinates.
    m00, m01 = cos, sin / r
    m10, m11 = -sin * r, cos
    theta = torch.zeros(len(a), 2, 3, dtype=cos.dtype, device=cos.device)
    theta[:, 0, 0], theta[:, 0, 1] = sx * m00, sx * m01
    theta[:, 1, 0], theta[:, 1, 1] = sy * m10, sy * m11
    return theta


def scale_images(images_u8: torch.Tensor, mode: str = DEFAULT_SCALING) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 network input.

    ``"unit"``: x / 255, in [0, 1]. ``"minmax255"`` (the recipe's default): each image
    rescaled so its own min maps to 0 and max to 255, over all channels; this equals
    the authors' normalise-then-min-max, since a global (x - mean) / std is affine
    and min-max undoes it. A constant image maps to 0.
    """
    if mode not in SCALINGS:
        raise ValueError(f"scaling mode {mode!r}: choose one of {', '.join(SCALINGS)}")
    if mode == "unit":
        # copy=True: .float() of a float32 input is the input itself, and div_ would
        # then scale the caller's tensor in place
        return images_u8.to(torch.float32, copy=True).div_(255.0)
    if images_u8.ndim == 3:  # one image (C, H, W)
        return scale_images(images_u8[None], mode)[0]
    flat = images_u8.flatten(1)  # amin / amax on the input dtype: aminmax and float are slower
    lo, hi = flat.amin(1).float(), flat.amax(1).float()
    shape = (-1,) + (1,) * (images_u8.ndim - 1)
    s = (255.0 / (hi - lo).clamp_min(1e-6)).view(shape)
    return images_u8.to(torch.float32, copy=True).sub_(lo.view(shape)).mul_(s)


def training_batch(
    images_u8: torch.Tensor,
    masks_u8: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    scaling: str = DEFAULT_SCALING,
    augment: bool = True,
    scale_first: bool = False,
    fixed_angle: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch as the network sees it: augmented (when ``augment``) and scaled.

    ``fixed_angle``: every rotated sample uses this angle (degrees; the authors' defect,
    see :func:`augment_batch`) instead of drawing its own.

    ``scale_first=False`` (segbench's order, the fair recipe): flip / rotate the uint8
    image, rotated-in corners filled with 0, then scale, so the corners become the new
    minimum and an image whose own minimum is above 0 is rescaled with a wider range
    (lower contrast). ``scale_first=True`` (the authors' order, the paper recipe):
    scale each image first, then flip / rotate the float image (fill 0 = the image's
    minimum under ``minmax255``): the contrast is the image's own. The two agree on
    samples that are not rotated and on images whose minimum is 0.
    """
    x, y = images_u8, masks_u8
    if scale_first:
        x = scale_images(x, scaling)
    if augment:
        x, y = augment_batch(x, y, generator, fixed_angle=fixed_angle)
    if not scale_first:
        x = scale_images(x, scaling)
    return x, y
