"""TransFuse-S-like hybrid (Zhang, Liu, Hu, MICCAI 2021, arXiv:2102.08005).

Built from well-kept parts, with random weights by default and never a download:
a torchvision ResNet-34 (stem, layer1-3; no layer4, no fc) and a timm DeiT-small
cut to 8 blocks. The two branches run in parallel and are fused at 1/16, 1/8 and
1/4 by BiFusion blocks; an attention-gated decoder climbs from 1/16 to 1/4 and
three heads predict the mask:

===========  ======================  =========================  ===========
head         feature                 returned by                loss weight
===========  ======================  =========================  ===========
main         fused decoder, 1/4      ``forward``                0.5
aux 1        transformer, 1/4        ``forward_aux(x)[1][0]``   0.3
aux 2        fused BiFusion, 1/16    ``forward_aux(x)[1][1]``   0.2
===========  ======================  =========================  ===========

The weights are those of the authors' training loss (0.5 / 0.3 / 0.2 on
weighted BCE + weighted IoU); the paper predicts with the fused 1/4 head.

Parameters: 26,248,341 built for 192x256, 26,272,917 for 256x256 (the learned
positional embedding has one row per 16x16 patch; the paper prints 26.16 M).
The authors' code counts 384 more (26,248,725 at 192x256): a DeiT class token it
never uses, left out here. With all three heads thop counts 11.50 G MACs at
1x3x256x256, the paper's "11.50 GFLOPs"; ``forward`` skips the two auxiliary heads
(11.34 G). Other input sizes work too: the positional embedding is
resampled to the token grid at run time (timm ``dynamic_img_size``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import InputSpec, SegmentationModel
from models.registry import PaperFigures, PaperScores, register_model

__all__ = ["TransFuseS", "transfuse_s", "load_transfuse_weights"]

_EMBED = 384  # DeiT-small width
_DEPTH = 8  # TransFuse-S keeps 8 of DeiT-small's 12 blocks
_PATCH = 16


def _conv(
    in_ch: int, out_ch: int, k: int, bn: bool = False, relu: bool = True, bias: bool = True
) -> nn.Sequential:
    """k x k conv ('same' padding) with optional BatchNorm and ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """Pre-activation bottleneck (BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1) with a 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1),
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class _ResDoubleConv(nn.Module):
    """ReLU((3x3 conv-BN-ReLU-3x3 conv-BN)(x) + (1x1 conv-BN)(x))."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(in_ch, out_ch, 3, bn=True, relu=True),
            _conv(out_ch, out_ch, 3, bn=True, relu=False),
        )
        self.identity = _conv(in_ch, out_ch, 1, bn=True, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.identity(x))


class _AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on the skip ``x`` driven by ``g``."""

    def __init__(self, g_ch: int, x_ch: int, int_ch: int) -> None:
        super().__init__()
        self.w_g = _conv(g_ch, int_ch, 1, bn=True, relu=False)
        self.w_x = _conv(x_ch, int_ch, 1, bn=True, relu=False)
        self.psi = nn.Sequential(_conv(int_ch, 1, 1, bn=True, relu=False), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(self.relu(self.w_g(g) + self.w_x(x)))


class _Up(nn.Module):
    """Bilinear x2, optionally gate and concatenate a skip, then a residual double conv."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int = 0) -> None:
        super().__init__()
        self.gate = _AttentionGate(in_ch, skip_ch, out_ch) if skip_ch else None
        self.conv = _ResDoubleConv(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        if skip is not None and self.gate is not None:
            x = torch.cat([self.gate(x, skip), x], dim=1)
        return self.conv(x)


class _BiFusion(nn.Module):
    """Fuses a CNN feature ``c`` and a transformer feature ``t`` of the same size.

    Channel attention (SE, reduction ``r``) on ``t``; spatial attention (channel
    max and mean -> 7x7 conv + BN -> sigmoid) on ``c``; a bilinear Hadamard term;
    the three are concatenated and merged by a residual bottleneck.
    """

    def __init__(self, c_ch: int, t_ch: int, r: int, int_ch: int, out_ch: int, drop: float) -> None:
        super().__init__()
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(t_ch, t_ch // r, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(t_ch // r, t_ch, 1),
            nn.Sigmoid(),
        )
        self.spatial = _conv(2, 1, 7, bn=True, relu=False, bias=False)
        self.w_c = _conv(c_ch, int_ch, 1, bn=True, relu=False)
        self.w_t = _conv(t_ch, int_ch, 1, bn=True, relu=False)
        self.w = _conv(int_ch, int_ch, 3, bn=True, relu=True)
        self.residual = _Residual(c_ch + t_ch + int_ch, out_ch)
        self.dropout = nn.Dropout2d(drop)

    def forward(self, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bilinear = self.w(self.w_c(c) * self.w_t(t))
        pooled = torch.cat([c.amax(1, keepdim=True), c.mean(1, keepdim=True)], dim=1)
        c = c * torch.sigmoid(self.spatial(pooled))
        t = t * self.se(t)
        return self.dropout(self.residual(torch.cat([c, t, bilinear], dim=1)))


class TransFuseS(SegmentationModel):
    """TransFuse-S-like model; H and W must be multiples of 16 (DeiT patch, ResNet 1/16)."""

    input_spec = InputSpec(multiple=_PATCH, min_size=_PATCH)

    def __init__(
        self,
        num_classes: int = 1,
        in_channels: int = 3,
        img_size: int | Sequence[int] = 256,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__(in_channels)
        import timm
        import torchvision

        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(size) != 2 or any(s < _PATCH or s % _PATCH for s in size):
            raise ValueError(
                f"transfuse_s: img_size must be an int or (H, W) of multiples of {_PATCH}, "
                f"got {img_size!r}"
            )
        self.img_size: tuple[int, int] = (int(size[0]), int(size[1]))

        # CNN branch: torchvision ResNet-34 without layer4 / fc (1/4: 64, 1/8: 128, 1/16: 256).
        resnet = torchvision.models.resnet34(weights=None)
        if in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        del resnet.layer4, resnet.fc, resnet.avgpool
        self.resnet = resnet

        # Transformer branch: DeiT-small, 8 blocks, no classifier. The positional
        # embedding is built for img_size and resampled at run time for other grids.
        self.transformer = timm.create_model(
            "deit_small_patch16_224",
            pretrained=False,
            depth=_DEPTH,
            num_classes=0,
            img_size=self.img_size,
            in_chans=in_channels,
            dynamic_img_size=True,
            # The authors' DeiT adds positions to the patch tokens only and never uses the
            # class token, so none is built here (their count includes it unused: +384).
            class_token=False,
            global_pool="",
        )
        self.up1 = _Up(_EMBED, 128)  # 384 @ 1/16 -> 128 @ 1/8
        self.up2 = _Up(128, 64)  # -> 64 @ 1/4

        self.fuse16 = _BiFusion(256, _EMBED, r=4, int_ch=256, out_ch=256, drop=drop_rate / 2)
        self.fuse8 = _BiFusion(128, 128, r=2, int_ch=128, out_ch=128, drop=drop_rate / 2)
        self.fuse4 = _BiFusion(64, 64, r=1, int_ch=64, out_ch=64, drop=drop_rate / 2)
        self.dec8 = _Up(256, 128, skip_ch=128)
        self.dec4 = _Up(128, 64, skip_ch=64)

        self.head16 = nn.Sequential(
            _conv(256, 64, 1, bn=True, relu=True),
            _conv(64, 64, 3, bn=True, relu=True),
            _conv(64, num_classes, 3, relu=False),
        )
        self.head_t4 = nn.Sequential(
            _conv(64, 64, 3, bn=True, relu=True), _conv(64, num_classes, 3, relu=False)
        )
        self.head4 = nn.Sequential(
            _conv(64, 64, 3, bn=True, relu=True), _conv(64, num_classes, 3, relu=False)
        )
        self.drop = nn.Dropout2d(drop_rate)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fused 1/4, transformer 1/4, fused 1/16) features that the three heads read."""
        self.check_input_shape(x)
        h, w = x.shape[-2:]

        vit = self.transformer
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]
        t16 = tokens.transpose(1, 2).reshape(x.shape[0], _EMBED, h // _PATCH, w // _PATCH)
        t16 = self.drop(t16)
        t8 = self.drop(self.up1(t16))
        t4 = self.drop(self.up2(t8))

        r = self.resnet
        c = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        c4 = self.drop(r.layer1(c))
        c8 = self.drop(r.layer2(c4))
        c16 = self.drop(r.layer3(c8))

        f16 = self.fuse16(c16, t16)
        f8 = self.dec8(f16, self.fuse8(c8, t8))
        f4 = self.dec4(f8, self.fuse4(c4, t4))
        return f4, t4, f16

    @staticmethod
    def _full(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits: the fused 1/4 head, up-sampled to the input.

        The auxiliary heads are skipped here (they do not feed the prediction; about
        0.17 G MACs at 256x256, which the paper's 11.50 "GFLOPs" include).
        """
        f4, _, _ = self._features(x)
        return self._full(self.head4(f4), x)

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(main logits, [transformer 1/4 logits, fused 1/16 logits]), all at input size."""
        f4, t4, f16 = self._features(x)
        main = self._full(self.head4(f4), x)
        return main, [self._full(self.head_t4(t4), x), self._full(self.head16(f16), x)]


# --------------------------------------------------------------------------- weights


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"transfuse_s: weights_path {str(path)!r} does not exist")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors come in many types
        raise ValueError(
            f"transfuse_s: cannot read weights_path {str(path)!r} as a torch state_dict: {err}"
        ) from err
    # Training checkpoints often wrap the state_dict.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"transfuse_s: weights_path {str(path)!r} does not hold a state_dict "
            "(a mapping of parameter names to tensors)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _fit_pos_embed(sd: dict[str, torch.Tensor], key: str, vit: nn.Module, path: Path) -> None:
    """Resample a stored positional embedding to ``vit``'s token grid (ImageNet 14x14 -> ours).

    A stored class-token row (DeiT checkpoints) is dropped: this model has no class token.
    """
    from timm.layers import resample_abs_pos_embed

    if key not in sd or sd[key].shape == vit.pos_embed.shape:
        return
    n = sd[key].shape[1]
    for prefix in (0, 1):
        side = int(round((n - prefix) ** 0.5))
        if side * side == n - prefix:
            break
    else:
        raise ValueError(
            f"transfuse_s: {str(path)!r}: {key} holds {n} tokens, not a square grid, and "
            f"differs from this model's {tuple(vit.patch_embed.grid_size)} grid; build the "
            "model with the img_size the checkpoint was made for"
        )
    sd[key] = resample_abs_pos_embed(
        sd[key][:, prefix:], list(vit.patch_embed.grid_size), [side, side], num_prefix_tokens=0
    )


def _load_part(target: nn.Module, sd: dict[str, torch.Tensor], what: str, path: Path) -> None:
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise ValueError(
            f"transfuse_s: {str(path)!r} looks like a {what} state_dict but lacks "
            f"{len(missing)} keys, e.g. {missing[:3]}"
        )
    bad = [
        (k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        raise ValueError(
            f"transfuse_s: {str(path)!r}: {len(bad)} shape mismatches for the {what}, e.g. "
            f"{k}: file {got} vs model {want} (in_channels differs from the checkpoint?)"
        )
    # Extra keys (ResNet layer4 / fc, DeiT blocks 8-11 / head) are expected and ignored.
    target.load_state_dict({k: sd[k] for k in own}, strict=True)


def load_transfuse_weights(model: TransFuseS, paths: str | Path | Sequence[str | Path]) -> None:
    """Load local weights into ``model``; each file is recognised by its keys.

    Accepted (optionally wrapped under ``state_dict`` / ``model`` / ``model_state_dict``,
    ``module.`` prefixes stripped):

    * a state_dict of the whole :class:`TransFuseS` (keys ``resnet.*``, ``transformer.*``,
      ...), loaded strictly;
    * a torchvision ResNet-34 state_dict (``conv1.weight``, ``layer1.*``, ...; ``layer4`` and
      ``fc`` are ignored), e.g. ``ResNet34_Weights.IMAGENET1K_V1`` saved to disk;
    * a timm DeiT-small state_dict (``patch_embed.*``, ``blocks.*``, ...; blocks 8-11 and
      ``head`` are ignored), e.g. ``deit_small_patch16_224`` saved to disk.

    Stored positional embeddings are resampled to the model's token grid. Pass one
    path, or a list such as ``[resnet34.pth, deit_small.pth]``.
    """
    for path, sd in _read_all(paths):
        _apply_state_dict(model, sd, path)


def _read_all(
    paths: str | Path | Sequence[str | Path],
) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [(Path(p), _read_state_dict(Path(p))) for p in paths]


def _apply_state_dict(model: TransFuseS, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Load one file's state_dict into the whole model or the part its keys belong to."""
    if any(k.startswith("resnet.") for k in sd) and any(k.startswith("transformer.") for k in sd):
        _fit_pos_embed(sd, "transformer.pos_embed", model.transformer, path)
        unexpected = sorted(set(sd) - set(model.state_dict()))
        if unexpected:
            raise ValueError(
                f"transfuse_s: {str(path)!r} has {len(unexpected)} keys this model lacks, "
                f"e.g. {unexpected[:3]}"
            )
        _load_part(model, sd, "TransFuse-S", path)
    elif "layer1.0.conv1.weight" in sd:
        _load_part(model.resnet, sd, "torchvision ResNet-34", path)
    elif "patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd:
        _fit_pos_embed(sd, "pos_embed", model.transformer, path)
        _load_part(model.transformer, sd, "timm DeiT-small", path)
    else:
        raise ValueError(
            f"transfuse_s: {str(path)!r} is neither a TransFuse-S, a torchvision ResNet-34 "
            f"nor a timm DeiT-small state_dict (first keys: {list(sd)[:3]})"
        )


@register_model(
    "transfuse_s",
    architecture=TransFuseS,
    full_name="TransFuse-S (ResNet-34 + DeiT-S/8, BiFusion)",
    paper="TransFuse: Fusing Transformers and CNNs for Medical Image Segmentation",
    year=2021,
    citation="zhang2021transfuse",
    reference="Zhang, Y., Liu, H., Hu, Q. MICCAI 2021, LNCS 12901, pp. 14-24. arXiv:2102.08005",
    family="comparison",
    reported=PaperFigures(
        params_m=26.16,
        gflops=11.50,
        isic2017=PaperScores(dsc=88.40, miou=79.21),
        isic2018=PaperScores(dsc=89.27, miou=80.63),
    ),
    loss_weights=(0.5, (0.3, 0.2)),
    notes="Aux order: transformer 1/4 head (0.3), fused 1/16 head (0.2); main = fused 1/4 "
    "head (0.5), as in the authors' loss. Random init here (the paper starts from ImageNet "
    "ResNet-34 and DeiT-S; pass weights_path). Recipe in the paper: Adam lr 7e-5, betas "
    "(0.5, 0.999), batch 16, 25 epochs, weighted BCE + weighted IoU. The parameter count "
    "depends on img_size (one positional-embedding row per 16x16 patch); the authors' count "
    "adds a class token they never use.",
)
def transfuse_s(
    num_classes: int = 1,
    in_channels: int = 3,
    img_size: int | Sequence[int] = 256,
    drop_rate: float = 0.2,
    weights_path: str | Path | Sequence[str | Path] | None = None,
) -> TransFuseS:
    """TransFuse-S-like model built for ``img_size`` (int or (H, W)); random weights unless
    ``weights_path`` names local files (see :func:`load_transfuse_weights`)."""
    # Read the files first so that a bad path fails before the 26 M-parameter build.
    state_dicts = _read_all(weights_path) if weights_path is not None else []
    model = TransFuseS(num_classes, in_channels, img_size=img_size, drop_rate=drop_rate)
    for path, sd in state_dicts:
        _apply_state_dict(model, sd, path)
    return model
