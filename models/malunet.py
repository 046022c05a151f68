"""MALUNet: a multi-attention and light-weight UNet (Ruan et al., IEEE BIBM 2022).

A six-stage UNet with additive skips whose deep stages use two attention
blocks, plus a bridge that rewrites the five skips:

- DGA, dilated gated attention (:class:`DilatedGatedAttention`);
- IEA, inverted external attention (:class:`ExternalAttention`);
- SAB / CAB, spatial and channel attention bridges, combined in the SC bridge
  (:class:`SpatialAttentionBridge`, :class:`ChannelAttentionBridge`,
  :class:`SCAttentionBridge`).

Module and parameter names follow the authors' code, so their checkpoints load
with ``load_state_dict(strict=True)``.

The tied external memory
------------------------
In the authors' code each IEA block's ``linear_1.weight`` is a transposed view
of ``linear_0.weight``'s storage, while both stay registered Parameters. Hence:

- the state_dict holds both keys and ``sum(p.numel() for p in parameters())``
  is 177,943 (the paper's 0.177 M), yet only 146,711 values are unique: the six
  IEA memories (31,232 values) are counted twice;
- an optimizer steps the shared storage twice per step (once through each
  Parameter, each with its own moments; weight decay is applied twice).

This module keeps the tie through ``load_state_dict`` (also ``assign=True``),
``.to()`` / ``.cuda()`` / ``.half()``, ``copy.deepcopy`` and pickling, which
would otherwise give ``linear_1`` a storage of its own.

The authors' own code does not keep it: their ``model.cuda()`` converts each
Parameter on its own, so every parameter gets new storage and the IEA tie is
broken before training starts. Their published (GPU) results therefore come from
an untied model with 177,943 independent weights: two separate memories per IEA
block, each updated by its own gradient. ``tie_memory=False`` builds that model
(and loads their GPU-trained checkpoints; ``load_state_dict`` on a tied model
refuses memories that are not transposes). The default stays tied, the model the
code describes before ``.cuda()``; both count 177,943 by numel, the paper's 0.177 M.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import SegmentationModel
from models.layers import AUTHORS_INPUT_SPEC, authors_init_, check_channel_list
from models.registry import PaperFigures, PaperScores, register_model

__all__ = [
    "MALUNet",
    "ChannelAttentionBridge",
    "DepthwiseSeparableConv",
    "DilatedGatedAttention",
    "ExternalAttention",
    "GatedAttentionUnit",
    "SCAttentionBridge",
    "SpatialAttentionBridge",
    "malunet",
]


class DepthwiseSeparableConv(nn.Module):
    """DW-sep unit: depthwise conv (bias) -> GroupNorm(4) -> 1x1 conv to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size, padding=padding, groups=in_ch)
        self.norm_layer = nn.GroupNorm(4, in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm_layer(self.conv1(x)))


class GatedAttentionUnit(nn.Module):
    """Gated attention unit of DGA: ``wo(w1(x) * w2(x)) + cw(x)``.

    ``w1`` is a sigmoid gate (3x3 DW-sep), ``w2`` the GELU value (5x5 DW-sep),
    ``wo`` a 3x3 DW-sep to ``out_ch`` with GELU, ``cw`` a 1x1 shortcut.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        k2 = kernel_size + 2
        self.w1 = nn.Sequential(
            DepthwiseSeparableConv(in_ch, in_ch, kernel_size, kernel_size // 2), nn.Sigmoid()
        )
        self.w2 = nn.Sequential(DepthwiseSeparableConv(in_ch, in_ch, k2, k2 // 2), nn.GELU())
        self.wo = nn.Sequential(DepthwiseSeparableConv(in_ch, out_ch, kernel_size), nn.GELU())
        self.cw = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.w1(x) * self.w2(x)) + self.cw(x)


class DilatedGatedAttention(nn.Module):
    """DGA, dilated gated attention (in -> out).

    Four channel chunks through depthwise 3x3 convs at dilations 7, 5, 2, 1,
    concatenated, GroupNorm(4), 1x1 conv, GELU, then the gated attention unit.
    """

    dilations = (7, 5, 2, 1)

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        c = in_ch // 4
        for i, d in enumerate(self.dilations):
            self.add_module(f"mda{i}", nn.Conv2d(c, c, 3, padding=d, dilation=d, groups=c))
        self.norm_layer = nn.GroupNorm(4, in_ch)
        self.conv = nn.Conv2d(in_ch, in_ch, 1)
        self.gau = GatedAttentionUnit(in_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1, x2, x3 = torch.chunk(x, 4, dim=1)
        x = torch.cat((self.mda0(x0), self.mda1(x1), self.mda2(x2), self.mda3(x3)), dim=1)
        x = F.gelu(self.conv(self.norm_layer(x)))
        return self.gau(x)


def _retie_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    # load_state_dict(assign=True) swaps in new Parameters; re-point linear_1.
    if module.tied:
        module.tie_()


class ExternalAttention(nn.Module):
    """IEA, inverted external attention on ``channels`` (the authors' ``EAblock``).

    1x1 conv, then an external memory of 4C units (``linear_0``: C -> 4C),
    softmax over the pixels, renormalised over the 4C units (double
    normalisation), read back by ``linear_1`` (4C -> C), 1x1 conv without
    bias, GroupNorm(4), residual add, GELU.

    ``linear_1.weight`` is a transposed view of ``linear_0.weight``'s storage
    (see the module docstring): call :meth:`untie_` to give it its own copy.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.k = channels * 4
        self.linear_0 = nn.Conv1d(channels, self.k, 1, bias=False)
        self.linear_1 = nn.Conv1d(self.k, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm_layer = nn.GroupNorm(4, channels)
        self.tied = True
        self.tie_()
        self.register_load_state_dict_post_hook(_retie_after_load)

    def tie_(self) -> None:
        """Make ``linear_1.weight`` share ``linear_0.weight``'s storage, transposed."""
        self.linear_1.weight.data = self.linear_0.weight.data.permute(1, 0, 2)
        self.tied = True

    def untie_(self) -> None:
        """Give ``linear_1.weight`` its own (contiguous) copy of the current values."""
        self.linear_1.weight.data = self.linear_1.weight.data.contiguous().clone()
        self.tied = False

    @property
    def is_tied(self) -> bool:
        """Whether the two memories currently share storage as transposes."""
        w0, w1 = self.linear_0.weight, self.linear_1.weight
        return (
            w0.untyped_storage().data_ptr() == w1.untyped_storage().data_ptr()
            and w1.storage_offset() == w0.storage_offset()
            and w1.stride() == w0.permute(1, 0, 2).stride()
        )

    def _apply(self, fn: Any, recurse: bool = True) -> ExternalAttention:
        # .to()/.cuda()/.half() convert each Parameter on its own, which would
        # give linear_1 a separate storage: re-point it at linear_0's.
        super()._apply(fn, recurse=recurse)
        if self.tied:
            self.tie_()
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy.deepcopy / pickle clone each Parameter separately.
        super().__setstate__(state)
        if self.tied:
            self.tie_()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # Loading copies linear_0 then linear_1 into the one storage, so the
        # second silently wins: refuse memories that are not transposes.
        k0, k1 = prefix + "linear_0.weight", prefix + "linear_1.weight"
        if self.tied and k0 in state_dict and k1 in state_dict:
            w0, w1 = state_dict[k0], state_dict[k1]
            if w0.dim() == 3 and w1.shape == w0.permute(1, 0, 2).shape:
                if not torch.equal(w1.to(w0), w0.permute(1, 0, 2)):
                    error_msgs.append(
                        f"{k1} is not the transpose of {k0}, but this model ties the two "
                        "external memories (one storage). The checkpoint was trained untied "
                        "(e.g. the authors' code after .cuda()); build the model with "
                        "tie_memory=False to load it."
                    )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idn = x
        x = self.conv1(x)
        b, c, h, w = x.shape
        attn = self.linear_0(x.view(b, c, h * w))  # B x 4C x N
        attn = F.softmax(attn, dim=-1)
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
        x = self.linear_1(attn).view(b, c, h, w)
        x = self.norm_layer(self.conv2(x))
        return F.gelu(x + idn)


class ChannelAttentionBridge(nn.Module):
    """CAB, channel attention bridge over the five skips.

    Global average pools of all skips are concatenated into one sequence,
    mixed by a 1-channel Conv1d(k=3) (``get_all_att``), then one projection
    per skip (``att1``..``att5``: Linear for ``split_att="fc"``, 1x1 Conv1d for
    ``"conv"``) and a sigmoid give each skip's channel weights.
    """

    def __init__(self, widths: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        if split_att not in ("fc", "conv"):
            raise ValueError(f"malunet: split_att must be 'fc' or 'conv', got {split_att!r}")
        total = sum(widths)
        self.split_att = split_att
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # a module, as in the authors' code (thop counts it)
        self.get_all_att = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        for i, c in enumerate(widths, start=1):
            proj = nn.Linear(total, c) if split_att == "fc" else nn.Conv1d(total, c, 1)
            self.add_module(f"att{i}", proj)
        self.sigmoid = nn.Sigmoid()

    def forward(self, *skips: torch.Tensor) -> list[torch.Tensor]:
        att = torch.cat([self.avgpool(t) for t in skips], dim=1)  # B x sum(C) x 1 x 1
        att = self.get_all_att(att.squeeze(-1).transpose(-1, -2))  # B x 1 x sum(C)
        if self.split_att != "fc":
            att = att.transpose(-1, -2)  # B x sum(C) x 1
        out = []
        for i, t in enumerate(skips, start=1):
            a = self.sigmoid(getattr(self, f"att{i}")(att))
            if self.split_att == "fc":
                a = a.transpose(-1, -2)
            out.append(a.unsqueeze(-1).expand_as(t))
        return out


class SpatialAttentionBridge(nn.Module):
    """SAB, spatial attention bridge: one shared 7x7 (dilation 3) conv + sigmoid
    on the [channel-mean, channel-max] maps of every skip."""

    def __init__(self) -> None:
        super().__init__()
        self.shared_conv2d = nn.Sequential(
            nn.Conv2d(2, 1, 7, stride=1, padding=9, dilation=3), nn.Sigmoid()
        )

    def forward(self, *skips: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for t in skips:
            avg = torch.mean(t, dim=1, keepdim=True)
            mx, _ = torch.max(t, dim=1, keepdim=True)
            out.append(self.shared_conv2d(torch.cat([avg, mx], dim=1)))
        return out


class SCAttentionBridge(nn.Module):
    """SC bridge (``scab``): s = SAB * t; u = s + t; new skip = CAB(u) * u + s."""

    def __init__(self, widths: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        self.catt = ChannelAttentionBridge(widths, split_att)
        self.satt = SpatialAttentionBridge()

    def forward(self, *skips: torch.Tensor) -> list[torch.Tensor]:
        s = [a * t for a, t in zip(self.satt(*skips), skips)]
        u = [si + t for si, t in zip(s, skips)]
        return [a * ui + si for a, ui, si in zip(self.catt(*u), u, s)]


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=(2, 2), mode="bilinear", align_corners=True)


class MALUNet(SegmentationModel):
    """MALUNet. ``forward`` returns logits (N, num_classes, H, W); the authors'
    forward ends in a sigmoid, which is left to the loss / the caller here.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        c_list: the six stage widths.
        split_att: CAB projections, ``"fc"`` (Linear, the default) or ``"conv"``.
        bridge: use the SC bridge on the skips.
        tie_memory: keep each IEA block's ``linear_1`` a transposed view of
            ``linear_0`` (the authors' code on CPU, 146,711 unique weights).
            ``False`` gives them separate storage after the (identical)
            initialisation: the model the authors trained after ``.cuda()``,
            177,943 independent weights (see the module docstring).
    """

    input_spec = AUTHORS_INPUT_SPEC

    def __init__(
        self,
        num_classes: int = 1,
        in_channels: int = 3,
        c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
        split_att: str = "fc",
        bridge: bool = True,
        tie_memory: bool = True,
    ) -> None:
        super().__init__(in_channels)
        c = check_channel_list(c_list, "malunet")
        self.num_classes = num_classes
        self.bridge = bridge

        self.encoder1 = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1))
        self.encoder3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, padding=1))
        self.encoder4 = nn.Sequential(ExternalAttention(c[2]), DilatedGatedAttention(c[2], c[3]))
        self.encoder5 = nn.Sequential(ExternalAttention(c[3]), DilatedGatedAttention(c[3], c[4]))
        self.encoder6 = nn.Sequential(ExternalAttention(c[4]), DilatedGatedAttention(c[4], c[5]))
        if bridge:
            self.scab = SCAttentionBridge(c[:5], split_att)
        self.decoder1 = nn.Sequential(DilatedGatedAttention(c[5], c[4]), ExternalAttention(c[4]))
        self.decoder2 = nn.Sequential(DilatedGatedAttention(c[4], c[3]), ExternalAttention(c[3]))
        self.decoder3 = nn.Sequential(DilatedGatedAttention(c[3], c[2]), ExternalAttention(c[2]))
        self.decoder4 = nn.Sequential(nn.Conv2d(c[2], c[1], 3, padding=1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, padding=1))
        for i in range(5):
            self.add_module(f"ebn{i + 1}", nn.GroupNorm(4, c[i]))
        for i in range(5):
            self.add_module(f"dbn{i + 1}", nn.GroupNorm(4, c[4 - i]))
        self.final = nn.Conv2d(c[0], num_classes, kernel_size=1)

        # Initialised while tied, as in the authors' code: the storage ends with
        # linear_1's draw (std sqrt(2 / C)), applied after linear_0's.
        self.apply(authors_init_)
        if not tie_memory:
            for m in self.modules():
                if isinstance(m, ExternalAttention):
                    m.untie_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        out = F.gelu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t1 = out  # H/2
        out = F.gelu(F.max_pool2d(self.ebn2(self.encoder2(out)), 2, 2))
        t2 = out  # H/4
        out = F.gelu(F.max_pool2d(self.ebn3(self.encoder3(out)), 2, 2))
        t3 = out  # H/8
        out = F.gelu(F.max_pool2d(self.ebn4(self.encoder4(out)), 2, 2))
        t4 = out  # H/16
        out = F.gelu(F.max_pool2d(self.ebn5(self.encoder5(out)), 2, 2))
        t5 = out  # H/32
        if self.bridge:
            t1, t2, t3, t4, t5 = self.scab(t1, t2, t3, t4, t5)
        out = F.gelu(self.encoder6(out))  # takes the un-bridged stage-5 output

        out = F.gelu(self.dbn1(self.decoder1(out))) + t5
        out = F.gelu(_up2(self.dbn2(self.decoder2(out)))) + t4
        out = F.gelu(_up2(self.dbn3(self.decoder3(out)))) + t3
        out = F.gelu(_up2(self.dbn4(self.decoder4(out)))) + t2
        out = F.gelu(_up2(self.dbn5(self.decoder5(out)))) + t1
        return _up2(self.final(out))


@register_model(
    "malunet",
    architecture=MALUNet,
    full_name="MALUNet: Multi-Attention and Light-weight UNet",
    paper="MALUNet: A Multi-Attention and Light-weight UNet for Skin Lesion Segmentation",
    reference="Ruan, J., Xiang, S., Xie, M., Liu, T., Gao, Y. IEEE BIBM 2022. arXiv:2211.01784",
    year=2022,
    citation="ruan2022malunet",
    family="segbench",
    reported=PaperFigures(
        params_m=0.177,
        gflops=0.085,
        isic2017=PaperScores(miou=78.78, dsc=88.13, acc=96.18, spe=98.47, sen=84.78),
        isic2018=PaperScores(miou=80.25, dsc=89.04, acc=94.62, spe=96.19, sen=89.74),
    ),
    notes=(
        "IEA linear_1 is a transposed view of linear_0 (shared storage), so unique parameters "
        "are fewer than the numel count; the authors' .cuda() breaks that tie, and "
        "tie_memory=False builds the untied model they trained. Authors' input scale is "
        "[0, 255]."
    ),
)
def malunet(num_classes: int = 1, in_channels: int = 3, **kwargs: Any) -> MALUNet:
    """MALUNet with the paper's defaults; kwargs: ``c_list``, ``split_att``, ``bridge``,
    ``tie_memory`` (see :class:`MALUNet`)."""
    return MALUNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
