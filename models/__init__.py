"""segbench model registry: MALUNet, EGE-UNet and the models they are compared with.

Every model is a :class:`SegmentationModel` (``models/base.py``): it declares its input
constraint once (``input_spec``), checks every input with ``check_input_shape`` and its
``forward`` returns logits ``(N, num_classes, H, W)`` at the input resolution. Models
with deep supervision also offer ``forward_aux(x)`` returning ``(logits, [aux_logits,
...])`` (aux maps at input resolution, ordered as the weights in
``model_info(name).loss_weights``).

Models from outside segbench join the registry through the entry-point group
``segbench.models``, ``import_models`` (``--import`` on the command line) or a plain
``@register_model`` in the user's own code (:mod:`models.external`); a plain
``nn.Module`` is registered with ``input_spec=`` and wrapped in :class:`ModuleAdapter`.
"""

from models import registry
from models.adapter import ModuleAdapter, select_logits
from models.base import InputSizeError, InputSpec, SegmentationModel, check_input_size
from models.registry import (
    ModelInfo,
    PaperFigures,
    PaperScores,
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    register_model,
)

# Architecture modules register themselves on import. Keep this list explicit.
_ARCH_MODULES = [
    "malunet",
    "egeunet",
    "unet",
    "attention_unet",
    "transfuse",
    "baselines",
]


def _import_archs() -> None:
    import importlib

    for mod in _ARCH_MODULES:
        importlib.import_module(f"models.{mod}")


_import_archs()

from models.external import ModelImportError, import_models  # noqa: E402 (after the archs)

__all__ = [
    "InputSizeError",
    "InputSpec",
    "ModelImportError",
    "ModelInfo",
    "ModuleAdapter",
    "PaperFigures",
    "PaperScores",
    "SegmentationModel",
    "UnknownModelError",
    "check_input_size",
    "create_model",
    "import_models",
    "list_models",
    "model_info",
    "register_model",
    "registry",
    "select_logits",
]
