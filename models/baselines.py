"""Baselines from well-kept libraries, randomly initialised (nothing is downloaded).

segmentation-models-pytorch: ``Unet`` with ResNet-34, MobileNetV2 and
EfficientNet-B0 encoders, ``Segformer`` with MiT-B0 (``encoder_weights=None``);
torchvision: LR-ASPP MobileNetV3-Large (``weights=None, weights_backbone=None``).

Each is wrapped so that, like every segbench model, ``forward`` checks the input
(:meth:`~models.base.SegmentationModel.check_input_shape`) and returns logits
``(N, num_classes, H, W)`` at the input resolution (torchvision returns a dict). The
input constraint is declared once per library, on the wrapper class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import InputSpec, SegmentationModel
from models.registry import register_model

__all__ = [
    "LibrarySegmenter",
    "SmpSegmenter",
    "TorchvisionLRASPP",
    "lraspp_mobilenet_v3_large",
    "smp_segformer_mit_b0",
    "smp_unet_efficientnet_b0",
    "smp_unet_mobilenet_v2",
    "smp_unet_resnet34",
]

_SMP_CITATION = (
    "Iakubovskii, P. Segmentation Models Pytorch (2019), "
    "https://github.com/qubvel-org/segmentation_models.pytorch"
)
_UNET_CITATION = "Ronneberger, O., Fischer, P., Brox, T. MICCAI 2015. arXiv:1505.04597"


class LibrarySegmenter(SegmentationModel):
    """Wraps a library model: input check, dict unwrapping, logits at input size.

    Abstract: each library's subclass declares the ``input_spec`` its models share.
    """

    def __init__(self, net: nn.Module, in_channels: int) -> None:
        super().__init__(in_channels)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        h, w = x.shape[-2:]
        out = self.net(x)
        if isinstance(out, dict):  # torchvision segmentation models
            out = out["out"]
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out


class SmpSegmenter(LibrarySegmenter):
    """A segmentation-models-pytorch model (Unet / Segformer)."""

    # smp encoders down-sample 5 times; smp itself rejects other sizes with a RuntimeError.
    input_spec = InputSpec(multiple=32, min_size=32)


class TorchvisionLRASPP(LibrarySegmenter):
    """torchvision's LR-ASPP (returns a dict; its output is already at the input size)."""

    # torchvision interpolates its 1/16 and 1/8 features and the output to the input size,
    # so any H x W works; below 16 px the 1/16 branch would see a single padded pixel.
    input_spec = InputSpec(multiple=1, min_size=16)


def _smp_unet(encoder: str, num_classes: int, in_channels: int) -> SmpSegmenter:
    import segmentation_models_pytorch as smp

    net = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes)
    return SmpSegmenter(net, in_channels)


_SMP_META: dict[str, Any] = dict(family="smp", architecture=SmpSegmenter)


@register_model(
    "smp_unet_resnet34",
    full_name="U-Net, ResNet-34 encoder (smp)",
    paper="U-Net: Convolutional Networks for Biomedical Image Segmentation",
    year=2015,
    citation="ronneberger2015unet",
    reference=f"{_UNET_CITATION}; He, K. et al. Deep Residual Learning for Image Recognition. "
    f"CVPR 2016; {_SMP_CITATION}",
    notes="smp 0.6 Unet(resnet34), encoder_weights=None.",
    **_SMP_META,
)
def smp_unet_resnet34(num_classes: int = 1, in_channels: int = 3) -> SmpSegmenter:
    return _smp_unet("resnet34", num_classes, in_channels)


@register_model(
    "smp_unet_mobilenet_v2",
    full_name="U-Net, MobileNetV2 encoder (smp)",
    paper="MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    year=2018,
    citation="sandler2018mobilenetv2",
    reference=f"Sandler, M. et al. CVPR 2018. arXiv:1801.04381; {_UNET_CITATION}; {_SMP_CITATION}",
    notes="smp 0.6 Unet(mobilenet_v2), encoder_weights=None.",
    **_SMP_META,
)
def smp_unet_mobilenet_v2(num_classes: int = 1, in_channels: int = 3) -> SmpSegmenter:
    return _smp_unet("mobilenet_v2", num_classes, in_channels)


@register_model(
    "smp_unet_efficientnet_b0",
    full_name="U-Net, EfficientNet-B0 encoder (smp)",
    paper="EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    year=2019,
    citation="tan2019efficientnet",
    reference=f"Tan, M., Le, Q. V. ICML 2019. arXiv:1905.11946; {_UNET_CITATION}; {_SMP_CITATION}",
    notes="smp 0.6 Unet(efficientnet-b0), encoder_weights=None, less the encoder's unused "
    "ImageNet head (1x1 conv 320 -> 1280 and its BatchNorm), which smp's own parameter count "
    "includes; keep_unused_head=True keeps it.",
    **_SMP_META,
)
def smp_unet_efficientnet_b0(
    num_classes: int = 1, in_channels: int = 3, keep_unused_head: bool = False
) -> SmpSegmenter:
    model = _smp_unet("efficientnet-b0", num_classes, in_channels)
    if not keep_unused_head:
        # smp's EfficientNet encoder keeps the ImageNet head's 1x1 conv (320 -> 1280) and its
        # BatchNorm but never runs them: 412,160 dead parameters that would inflate the count
        # and leave parameters without gradients (DDP errors, optimizer noise).
        encoder = model.net.encoder
        del encoder._conv_head, encoder._bn1
    return model


@register_model(
    "smp_segformer_mit_b0",
    full_name="SegFormer, MiT-B0 encoder (smp)",
    paper="SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
    year=2021,
    citation="xie2021segformer",
    reference=f"Xie, E. et al. NeurIPS 2021. arXiv:2105.15203; {_SMP_CITATION}",
    notes="smp 0.6 Segformer(mit_b0), encoder_weights=None. smp's head already up-samples "
    "x4 to the input size.",
    **_SMP_META,
)
def smp_segformer_mit_b0(num_classes: int = 1, in_channels: int = 3) -> SmpSegmenter:
    import segmentation_models_pytorch as smp

    net = smp.Segformer(
        "mit_b0", encoder_weights=None, in_channels=in_channels, classes=num_classes
    )
    return SmpSegmenter(net, in_channels)


@register_model(
    "lraspp_mobilenet_v3_large",
    full_name="LR-ASPP, MobileNetV3-Large backbone (torchvision)",
    paper="Searching for MobileNetV3",
    year=2019,
    citation="howard2019mobilenetv3",
    reference="Howard, A. et al. ICCV 2019. arXiv:1905.02244",
    family="torchvision",
    architecture=TorchvisionLRASPP,
    notes="torchvision lraspp_mobilenet_v3_large(weights=None, weights_backbone=None). Any "
    "input size of at least 16x16.",
)
def lraspp_mobilenet_v3_large(num_classes: int = 1, in_channels: int = 3) -> TorchvisionLRASPP:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large as build

    net = build(weights=None, weights_backbone=None, num_classes=num_classes)
    if in_channels != 3:
        # torchvision has no in_channels option: swap the stem conv for one of the same shape.
        stem = net.backbone["0"][0]
        net.backbone["0"][0] = nn.Conv2d(
            in_channels,
            stem.out_channels,
            stem.kernel_size,
            stride=stem.stride,
            padding=stem.padding,
            bias=False,
        )
    return TorchvisionLRASPP(net, in_channels)
