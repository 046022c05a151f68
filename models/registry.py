"""Model registry: ``@register_model`` builders with paper metadata.

No global mutable state beyond the name -> entry table that decorators fill at
import time (the torchvision / timm pattern). Registration validates everything it
stores: the architecture is a :class:`~models.base.SegmentationModel` subclass
declaring its ``input_spec`` (or a plain ``nn.Module`` registered with ``input_spec=``
and wrapped in :class:`~models.adapter.ModuleAdapter`), and the papers' figures must fit
:class:`PaperFigures`, so a misspelt key fails at import instead of vanishing from the
tables.

Models from outside segbench (see :mod:`models.external`) register through the same
decorator; their :attr:`ModelInfo.source` names where they came from (a module, a file
or an installed distribution with its version) and a name taken twice is an error that
names both sources.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch.nn as nn

from models.adapter import ModuleAdapter, OutputSelector
from models.base import InputSizeError, InputSpec, SegmentationModel, check_input_size

__all__ = [
    "InputSizeError",
    "InputSpec",
    "ModelInfo",
    "PaperFigures",
    "PaperScores",
    "UnknownModelError",
    "check_input_size",
    "create_model",
    "list_models",
    "model_info",
    "model_source",
    "register_model",
    "unregister_model",
]


class UnknownModelError(KeyError):
    """Raised for a name that is not in the registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# --- papers' figures --------------------------------------------------------------------------


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_keys(raw: Mapping[str, Any], known: list[str], where: str) -> None:
    for key in raw:
        if key not in known:
            raise ValueError(
                f"{where}: unknown key {key!r}{_did_you_mean(str(key), known)}; "
                f"known keys: {', '.join(known)}"
            )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PaperScores:
    """Segmentation scores on one dataset, in percent, exactly as the paper prints them."""

    dsc: float | None = None  # Dice similarity coefficient
    miou: float | None = None  # mean intersection over union
    acc: float | None = None  # pixel accuracy
    spe: float | None = None  # specificity
    sen: float | None = None  # sensitivity

    def __post_init__(self) -> None:
        if not self.as_dict():
            raise ValueError("PaperScores: give at least one score (dsc, miou, acc, spe, sen)")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            value = _number(value, f"PaperScores.{f.name}")
            # Papers print percentages; a fraction (0.88) would sit far below every measured
            # point. No published segmentation score is at or below 1 %.
            if not 1.0 < value <= 100.0:
                raise ValueError(
                    f"PaperScores.{f.name} is a percentage in (1, 100] as printed in the "
                    f"paper, got {value!r}" + (" (a fraction?)" if 0 <= value <= 1 else "")
                )
            object.__setattr__(self, f.name, value)

    def as_dict(self) -> dict[str, float]:
        """The scores that are set, as a plain dict (``{"dsc": 88.13, ...}``)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "PaperScores") -> PaperScores:
        """Validate a mapping such as ``{"dsc": 88.13, "miou": 78.78}``; unknown keys raise."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping of scores, got {raw!r}")
        _unknown_keys(raw, [f.name for f in fields(cls)], where)
        try:
            return cls(**raw)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


@dataclass(frozen=True)
class PaperFigures(Mapping[str, Any]):
    """Figures a model's paper reports, exactly as printed; every field optional.

    ``params_m`` is parameters in millions and ``gflops`` the papers' "GFLOPs", which are
    thop MACs / 1e9 at 1x3x256x256; one :class:`PaperScores` per dataset of the paper's
    tables. A dataset the schema lacks is added here as one field (``ph2`` style).

    Also reads as the nested mapping the harness consumes,
    ``{"params_m": 0.177, "gflops": 0.085, "isic2017": {"dsc": 88.13, ...}}``: only the
    figures that are set appear, and each dataset reads as a plain ``dict``.
    """

    params_m: float | None = None
    gflops: float | None = None
    isic2017: PaperScores | None = None
    isic2018: PaperScores | None = None
    ph2: PaperScores | None = None

    def __post_init__(self) -> None:
        for name in ("params_m", "gflops"):
            value = getattr(self, name)
            if value is None:
                continue
            value = _number(value, f"PaperFigures.{name}")
            if value <= 0:
                raise ValueError(f"PaperFigures.{name} must be positive, got {value!r}")
            object.__setattr__(self, name, value)
        for name in self.dataset_names():
            value = getattr(self, name)
            if value is not None and not isinstance(value, PaperScores):
                scores = PaperScores.from_mapping(value, where=f"PaperFigures.{name}")
                object.__setattr__(self, name, scores)

    @classmethod
    def dataset_names(cls) -> list[str]:
        """Dataset keys the schema knows (every field but ``params_m`` and ``gflops``)."""
        return [f.name for f in fields(cls) if f.name not in ("params_m", "gflops")]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "reported") -> PaperFigures:
        """Validate the nested mapping form; an unknown key raises, naming the closest one."""
        if isinstance(raw, PaperFigures):
            return raw
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be PaperFigures(...) or a mapping, got {raw!r}")
        _unknown_keys(raw, [f.name for f in fields(cls)], where)
        kwargs = {
            key: value
            if key in ("params_m", "gflops") or isinstance(value, PaperScores)
            else PaperScores.from_mapping(value, where=f"{where}[{key!r}]")
            for key, value in raw.items()
        }
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    # Read-only mapping view (what bench reads: .get, [], .items()).
    def _present(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self._present():
            raise KeyError(key)
        value = getattr(self, key)
        return value.as_dict() if isinstance(value, PaperScores) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())


# --- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What segbench knows about a registered model.

    ``input_spec`` comes from the architecture class (its one declaration). ``reported``
    holds the paper's figures (:class:`PaperFigures`; a mapping given here is validated
    into one). ``loss_weights`` is ``(main, (aux_1, ...))``: weight of the main logits and
    of each auxiliary logit map returned by ``model.forward_aux`` (deep supervision);
    empty aux for models without side outputs. ``notes`` is prose: exact parameter and
    MAC counts live in ``results/complexity/golden.json``, not here.
    """

    name: str
    input_spec: InputSpec
    full_name: str = ""
    paper: str = ""
    year: int | None = None
    citation: str = ""  # citation key, e.g. "ruan2022malunet"
    reference: str = ""  # full bibliographic reference
    family: str = "segbench"
    reported: PaperFigures = field(default_factory=PaperFigures)
    loss_weights: tuple[float, tuple[float, ...]] = (1.0, ())
    notes: str = ""
    # Where the model comes from: "" for the models segbench ships; otherwise the
    # distribution and version ("byo-model 0.1.0"), the module or the file that registered
    # it. Tables label such a model as external and list this in their provenance.
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.input_spec, InputSpec):
            raise ValueError(
                f"{self.name}: input_spec must be an InputSpec, got {self.input_spec!r}"
            )
        reported = PaperFigures.from_mapping(self.reported, where=f"{self.name}: reported")
        object.__setattr__(self, "reported", reported)
        main, aux = self.loss_weights
        object.__setattr__(self, "loss_weights", (float(main), tuple(float(w) for w in aux)))

    @property
    def input_multiple(self) -> int:
        return self.input_spec.multiple

    @property
    def min_input(self) -> int:
        return self.input_spec.min_size

    @property
    def input_constraint(self) -> str:
        return self.input_spec.describe()

    @property
    def has_aux(self) -> bool:
        return len(self.loss_weights[1]) > 0

    @property
    def external(self) -> bool:
        """True for a model registered from outside segbench (``source`` is set)."""
        return bool(self.source)


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    architecture: type[nn.Module]
    info: ModelInfo
    origin: str  # the module that registered it (messages)
    adapter: tuple[InputSpec, OutputSelector] | None = None  # plain nn.Module: how to wrap it


_REGISTRY: dict[str, _Entry] = {}

# The source (distribution + version, module, file) that registrations are attributed to
# while an external module loads; set by models.external around its imports.
_LOADING_SOURCE: list[str] = []


def _architecture_of(
    key: str, fn: Callable[..., nn.Module], architecture: type[nn.Module] | None
) -> type[nn.Module]:
    arch = architecture
    if arch is None and isinstance(fn, type):
        arch = fn
    if arch is None:
        return nn.Module  # a builder of a plain module: the type is checked when it is built
    if not (isinstance(arch, type) and issubclass(arch, nn.Module)):
        raise TypeError(
            f"model {key!r}: register an nn.Module subclass (ideally a SegmentationModel), or "
            f"pass architecture=<the class the builder returns> (got {arch!r})"
        )
    return arch


def _spec_of(key: str, arch: type[nn.Module], input_spec: Any) -> InputSpec | None:
    """The input constraint: the SegmentationModel's class attribute, or given at registration
    for a plain nn.Module (``None`` then means: not declared, an error)."""
    if issubclass(arch, SegmentationModel):
        if input_spec is not None:
            raise TypeError(
                f"model {key!r}: {arch.__name__} is a SegmentationModel; its input constraint "
                "is declared once, as the class attribute input_spec, not in register_model"
            )
        if not isinstance(getattr(arch, "input_spec", None), InputSpec):
            raise TypeError(
                f"model {key!r}: {arch.__name__} declares no input_spec; add the class attribute "
                "input_spec = InputSpec(multiple=..., min_size=...)"
            )
        return None
    if input_spec is None:
        raise TypeError(
            f"model {key!r}: a plain nn.Module needs its input constraint at registration: "
            "register_model(..., input_spec=InputSpec(multiple=16, min_size=16)) (multiple = "
            "2 ** number of down-samplings; InputSpec(1, 1) for any size); a builder of a "
            "SegmentationModel passes architecture=<that class> instead"
        )
    if isinstance(input_spec, Mapping):
        input_spec = InputSpec(**input_spec)
    if not isinstance(input_spec, InputSpec):
        raise TypeError(f"model {key!r}: input_spec must be an InputSpec, got {input_spec!r}")
    return input_spec


def _describe(entry: _Entry) -> str:
    return entry.info.source or f"segbench ({entry.origin})"


def register_model(
    name: str | None = None,
    *,
    architecture: type[nn.Module] | None = None,
    input_spec: InputSpec | Mapping[str, int] | None = None,
    output: OutputSelector = None,
    **meta: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes=1, in_channels=3, **kwargs) -> model``.

    ``fn`` is a :class:`~models.base.SegmentationModel` subclass, or a function returning
    an instance of ``architecture`` (such a subclass); the input constraint is then read
    from that class's ``input_spec``. A plain ``nn.Module`` (class or builder) is accepted
    too, with its constraint given here as ``input_spec=InputSpec(...)``; ``create_model``
    then wraps it in :class:`~models.adapter.ModuleAdapter`, which checks each input and
    picks the logits out of a dict or tuple output (``output="logits"``, ``output=0`` or a
    function; see :func:`models.adapter.select_logits`). ``meta`` fills
    :class:`ModelInfo` (``reported`` as :class:`PaperFigures` or its mapping form).
    Everything is validated before the name is taken, so a failed registration leaves the
    registry unchanged; a name registered twice raises, naming both sources.
    """
    for legacy in ("input_multiple", "min_input"):
        if legacy in meta:
            raise TypeError(
                f"register_model: {legacy}= is not accepted; the input constraint is declared "
                "once, as input_spec on the architecture class (or input_spec= for a plain "
                "nn.Module)"
            )

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        origin = getattr(fn, "__module__", "?")
        source = meta.get("source") or (_LOADING_SOURCE[-1] if _LOADING_SOURCE else "")
        if not source and not (origin == "models" or origin.startswith("models.")):
            source = f"module {origin}"
        if key in _REGISTRY:
            raise ValueError(
                f"model {key!r} is registered twice: from {source or f'segbench ({origin})'} "
                f"and from {_describe(_REGISTRY[key])}; register one of them under another name"
            )
        arch = _architecture_of(key, fn, architecture)
        spec = _spec_of(key, arch, input_spec)
        if spec is None and output is not None:
            raise TypeError(
                f"model {key!r}: output= is for plain nn.Modules; a SegmentationModel's "
                "forward returns its logits itself"
            )
        info = ModelInfo(name=key, input_spec=spec or arch.input_spec, **{**meta, "source": source})
        entry = _Entry(fn, arch, info, origin, None if spec is None else (spec, output))
        _REGISTRY[key] = entry
        return fn

    return deco


def _entry(name: str) -> _Entry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}. "
            "A model of your own: --import MODULE|FILE.py, or install its package (entry "
            "point group segbench.models)"
        ) from None


def create_model(
    name: str,
    num_classes: int = 1,
    in_channels: int = 3,
    *,
    weights: str | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Build a registered model with random weights (never downloads), or with the
    committed trained ``weights`` of that name (``segbench weights list``; see
    :mod:`models.weights`: verified by sha256, built with the kwargs they were trained
    with).

    The model carries its metadata as ``model.segbench_info``; a builder that returns
    anything but its declared architecture fails here, not later in a harness. A plain
    ``nn.Module`` comes back wrapped in :class:`~models.adapter.ModuleAdapter` (its
    parameters under ``net.``), so every harness sees one interface.
    """
    if weights is not None:
        from models.weights import build_with_weights

        return build_with_weights(
            name, weights, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    entry = _entry(name)
    # The one call of the builder: every builder argument passes here.
    model = entry.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not isinstance(model, entry.architecture):
        raise TypeError(
            f"model {name!r}: the builder returned {type(model).__name__}, not the "
            f"registered architecture {entry.architecture.__name__}"
        )
    if entry.adapter is not None:
        spec, output = entry.adapter
        model = ModuleAdapter(model, in_channels=in_channels, input_spec=spec, output=output)
    model.segbench_info = entry.info
    return model


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (a temporary registration: ``bench.api`` for an
    unregistered instance, tests). Unknown names raise :class:`UnknownModelError`."""
    _entry(name)
    del _REGISTRY[name]


def model_source(name: str) -> str:
    """Where ``name`` comes from: ``""`` for a model segbench ships, else its source."""
    return model_info(name).source


def model_info(name: str) -> ModelInfo:
    """The registered metadata of ``name`` (unknown names raise :class:`UnknownModelError`)."""
    return _entry(name).info


def list_models(pattern: str | list[str] | None = None) -> list[str]:
    """Sorted registered names matching a wildcard pattern or comma-separated patterns."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if not pattern:
        return names
    pats = pattern if isinstance(pattern, list) else [p.strip() for p in pattern.split(",")]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats if p)]


def _ensure_loaded() -> None:
    # Importing the package registers every architecture module; then the models of
    # installed distributions (entry points) and of SEGBENCH_IMPORT (see models.external).
    import models  # noqa: F401
    from models import external

    external.load_external_models()
