"""EGE-UNet: an efficient group enhanced UNet (Ruan et al., MICCAI 2023).

MALUNet's skeleton (six stages, additive skips, the same channel list) with:

- GHPA, grouped multi-axis Hadamard product attention
  (:class:`GroupedHadamardAttention`) as the deep encoder / decoder stages;
- GAB, group aggregation bridges (:class:`GroupAggregationBridge`) that rebuild
  each skip from the deeper skip, the current skip and the decoder's side
  prediction at that level (deep supervision feeds the bridge).

Module and parameter names follow the authors' code (Apache-2.0), so their
checkpoints load with ``load_state_dict(strict=True)``.

Deep supervision: ``forward(x)`` returns the final logits; ``forward_aux(x)``
returns ``(logits, [side logits, deepest first])``, every map at the input
size, to be weighted by ``model_info("egeunet").loss_weights`` =
``(1.0, (0.1, 0.2, 0.3, 0.4, 0.5))``. The side heads run in ``forward`` too,
since each GAB takes its level's side prediction as a mask; only their
upsampling to the input size is skipped there. Side maps have one channel
whatever ``num_classes`` is, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import SegmentationModel
from models.layers import AUTHORS_INPUT_SPEC, LayerNorm2d, authors_init_, check_channel_list
from models.registry import PaperFigures, PaperScores, register_model

__all__ = ["EGEUNet", "GroupAggregationBridge", "GroupedHadamardAttention", "egeunet"]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class GroupedHadamardAttention(nn.Module):
    """GHPA, grouped multi-axis Hadamard product attention (in -> out).

    After a channels-first LayerNorm the channels split into four groups: three
    are multiplied (Hadamard product) by learnable maps over the (H, W),
    (C, H) and (C, W) axes, each an 8x8 / c x 8 parameter resized bilinearly
    to the feature size and refined by a small depthwise conv; the fourth goes
    through a depthwise conv. Concatenate, LayerNorm, depthwise 3x3, 1x1 to out.
    """

    def __init__(self, in_ch: int, out_ch: int, x: int = 8, y: int = 8) -> None:
        super().__init__()
        c = in_ch // 4
        self.params_xy = nn.Parameter(torch.ones(1, c, x, y))
        self.conv_xy = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv2d(c, c, 1)
        )
        self.params_zx = nn.Parameter(torch.ones(1, 1, c, x))
        self.conv_zx = nn.Sequential(
            nn.Conv1d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv1d(c, c, 1)
        )
        self.params_zy = nn.Parameter(torch.ones(1, 1, c, y))
        self.conv_zy = nn.Sequential(
            nn.Conv1d(c, c, 3, padding=1, groups=c), nn.GELU(), nn.Conv1d(c, c, 1)
        )
        self.dw = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1, groups=c)
        )
        self.norm1 = LayerNorm2d(in_ch, eps=1e-6)
        self.norm2 = LayerNorm2d(in_ch, eps=1e-6)
        self.ldw = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch),
            nn.GELU(),
            nn.Conv2d(in_ch, out_ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x1, x2, x3, x4 = torch.chunk(x, 4, dim=1)
        h, w = x1.shape[2:]
        # (H, W) axes: c x H x W map.
        x1 = x1 * self.conv_xy(_resize(self.params_xy, (h, w)))
        # (C, H) axes: x2 viewed as B x W x c x H; map c x H, shared over B and W.
        zx = self.conv_zx(_resize(self.params_zx, (x2.shape[1], h)).squeeze(0)).unsqueeze(0)
        x2 = (x2.permute(0, 3, 1, 2) * zx).permute(0, 2, 3, 1)
        # (C, W) axes: x3 viewed as B x H x c x W; map c x W, shared over B and H.
        zy = self.conv_zy(_resize(self.params_zy, (x3.shape[1], w)).squeeze(0)).unsqueeze(0)
        x3 = (x3.permute(0, 2, 1, 3) * zy).permute(0, 2, 1, 3)
        x4 = self.dw(x4)
        x = self.norm2(torch.cat([x1, x2, x3, x4], dim=1))
        return self.ldw(x)


class GroupAggregationBridge(nn.Module):
    """GAB, group aggregation bridge.

    The high-level skip ``xh`` (``high_ch``) is projected to ``low_ch`` and
    resized to the low-level skip ``xl``; both split into four groups, each
    group concatenated with the one-channel side prediction ``mask`` and
    passed through LayerNorm + a depthwise 3x3 conv at dilation 1, 2, 5, 7;
    the groups are concatenated, LayerNorm, 1x1 conv to ``low_ch``.
    """

    dilations = (1, 2, 5, 7)

    def __init__(self, high_ch: int, low_ch: int) -> None:
        super().__init__()
        self.pre_project = nn.Conv2d(high_ch, low_ch, 1)
        g = low_ch // 2 + 1  # a quarter of xh, a quarter of xl, the mask
        for i, d in enumerate(self.dilations):
            self.add_module(
                f"g{i}",
                nn.Sequential(
                    LayerNorm2d(g, eps=1e-6), nn.Conv2d(g, g, 3, padding=d, dilation=d, groups=g)
                ),
            )
        self.tail_conv = nn.Sequential(
            LayerNorm2d(2 * low_ch + 4, eps=1e-6), nn.Conv2d(2 * low_ch + 4, low_ch, 1)
        )

    def forward(self, xh: torch.Tensor, xl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        xh = _resize(self.pre_project(xh), xl.shape[2:])
        hs, ls = torch.chunk(xh, 4, dim=1), torch.chunk(xl, 4, dim=1)
        groups = [getattr(self, f"g{i}")(torch.cat((hs[i], ls[i], mask), dim=1)) for i in range(4)]
        return self.tail_conv(torch.cat(groups, dim=1))


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=(2, 2), mode="bilinear", align_corners=True)


class EGEUNet(SegmentationModel):
    """EGE-UNet. ``forward`` returns logits (N, num_classes, H, W);
    :meth:`forward_aux` adds the five side logits for deep supervision.

    Args:
        num_classes: output channels of the final map.
        in_channels: input channels.
        c_list: the six stage widths.
    """

    input_spec = AUTHORS_INPUT_SPEC

    def __init__(
        self,
        num_classes: int = 1,
        in_channels: int = 3,
        c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
    ) -> None:
        super().__init__(in_channels)
        c = check_channel_list(c_list, "egeunet")
        self.num_classes = num_classes

        self.encoder1 = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1))
        self.encoder3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, padding=1))
        self.encoder4 = nn.Sequential(GroupedHadamardAttention(c[2], c[3]))
        self.encoder5 = nn.Sequential(GroupedHadamardAttention(c[3], c[4]))
        self.encoder6 = nn.Sequential(GroupedHadamardAttention(c[4], c[5]))
        # GABk refines skip k from skip k+1 (GAB5 takes the stage-6 output).
        for k in range(5):
            self.add_module(f"GAB{k + 1}", GroupAggregationBridge(c[k + 1], c[k]))
        # gt_conv1 is the deepest side head (48 ch) ... gt_conv5 the shallowest (8 ch).
        for k in range(5):
            self.add_module(f"gt_conv{k + 1}", nn.Sequential(nn.Conv2d(c[4 - k], 1, 1)))
        self.decoder1 = nn.Sequential(GroupedHadamardAttention(c[5], c[4]))
        self.decoder2 = nn.Sequential(GroupedHadamardAttention(c[4], c[3]))
        self.decoder3 = nn.Sequential(GroupedHadamardAttention(c[3], c[2]))
        self.decoder4 = nn.Sequential(nn.Conv2d(c[2], c[1], 3, padding=1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, padding=1))
        for i in range(5):
            self.add_module(f"ebn{i + 1}", nn.GroupNorm(4, c[i]))
        for i in range(5):
            self.add_module(f"dbn{i + 1}", nn.GroupNorm(4, c[4 - i]))
        self.final = nn.Conv2d(c[0], num_classes, kernel_size=1)
        self.apply(authors_init_)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final logits and the side logits (deepest first) at their own resolutions."""
        self.check_input_shape(x)
        skips = []
        out = x
        for i in range(5):
            enc, bn = getattr(self, f"encoder{i + 1}"), getattr(self, f"ebn{i + 1}")
            out = F.gelu(F.max_pool2d(bn(enc(out)), 2, 2))
            skips.append(out)  # t1 (H/2) ... t5 (H/32)
        deeper = F.gelu(self.encoder6(out))  # t6, H/32

        sides = []
        for j in range(5):  # level k = 5 - j, deepest first
            k = 5 - j
            dec, bn = getattr(self, f"decoder{j + 1}"), getattr(self, f"dbn{j + 1}")
            out = bn(dec(deeper if j == 0 else out))
            out = F.gelu(out if j == 0 else _up2(out))
            side = getattr(self, f"gt_conv{j + 1}")(out)
            skip = getattr(self, f"GAB{k}")(deeper, skips[k - 1], side)
            out = out + skip
            sides.append(side)
            deeper = skip  # the refined skip feeds the next (shallower) bridge
        return _up2(self.final(out)), sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, [side logits deepest first])``, all at the input size."""
        logits, sides = self._forward(x)
        size = x.shape[2:]
        return logits, [_resize(s, size) for s in sides]


@register_model(
    "egeunet",
    architecture=EGEUNet,
    full_name="EGE-UNet: Efficient Group Enhanced UNet",
    paper="EGE-UNet: an Efficient Group Enhanced UNet for skin lesion segmentation",
    reference="Ruan, J., Xie, M., Gao, J., Liu, T., Fu, Y. MICCAI 2023. arXiv:2307.08473",
    year=2023,
    citation="ruan2023egeunet",
    family="segbench",
    reported=PaperFigures(
        params_m=0.053,
        gflops=0.072,
        isic2017=PaperScores(miou=79.81, dsc=88.77),
        isic2018=PaperScores(miou=80.94, dsc=89.46),
    ),
    loss_weights=(1.0, (0.1, 0.2, 0.3, 0.4, 0.5)),
    notes=(
        "Deep supervision: forward_aux returns five side logits (deepest first); the "
        "bridges use them, so they are computed in forward too. Authors' input scale is "
        "[0, 255]."
    ),
)
def egeunet(num_classes: int = 1, in_channels: int = 3, **kwargs: Any) -> EGEUNet:
    """EGE-UNet with the paper's defaults; kwargs: ``c_list`` (see :class:`EGEUNet`)."""
    return EGEUNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
