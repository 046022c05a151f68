"""The run configuration: :class:`TrainConfig`, recipes (``bench/engine/recipes/*.yaml``) and typed overrides.

The recipes (``fair``, ``paper``) and why they differ are described in ``docs/protocol.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.precision import AUTOCAST_DTYPES

RECIPES_DIR = Path(__file__).parent / "recipes"

#: how the training augmentation draws its rotation angle (TrainConfig.rotation)
ROTATIONS = ("per-sample", "fixed")


def is_paper_recipe(recipe: str) -> bool:
    """The authors' protocol (``paper``) or an ablation of it (``paper-<variant>``, e.g.
    ``paper-fixed-angle``): the only recipes that may select on the test split."""
    return recipe == "paper" or str(recipe).startswith("paper-")


def fixed_rotation_angle(seed: int) -> float:
    """The one rotation angle (degrees in [0, 360)) of a ``rotation="fixed"`` run: drawn
    from the run's seed, so a resumed or repeated run uses the same one."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    return float(torch.rand(1, generator=g, dtype=torch.float64)) * 360.0


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults equal ``recipes/fair.yaml``.

    Fields in :data:`RUNTIME_FIELDS` say where and how fast to run, not what to
    compute, and are left out of :attr:`config_hash`.
    """

    model: str = "malunet"
    data: str = ""
    dataset: str | None = None  # results folder name; default: the data folder's name
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # builder kwargs for one model only, keyed by registry name (a recipe's per-model
    # choices, e.g. paper: {malunet: {tie_memory: false}}); model_kwargs wins on a clash
    per_model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe: str = "fair"
    # schedule of the run
    epochs: int = 300
    batch_size: int = 8
    image_size: int = 256
    seed: int = 42
    # AdamW
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # CosineAnnealingLR, stepped once per epoch; None: the run's own budget (T_max =
    # epochs), so a short run still ends at eta_min (see effective_t_max)
    t_max: int | None = None
    eta_min: float = 1e-5
    # BCE + Dice; loss: the BCE form, "bce_dice_logits" or the authors' "bce_dice_probs"
    # (sigmoid then nn.BCELoss, log clamped at -100): see bench.engine.losses
    loss: str = "bce_dice_logits"
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_smooth: float = 1.0
    # data
    input_scaling: str = "minmax255"
    augment: bool = True
    # False: flip / rotate the uint8 image (fill 0), then scale; True: the authors' order,
    # scale each image (input_scaling) first, then flip / rotate (fill 0)
    scale_before_augment: bool = False
    # "per-sample": every rotated sample draws its own angle; "fixed": one angle per run,
    # drawn from the run's seed (the authors' transform draws its angle once when it is
    # built: a defect reproduced only to measure what it costs, see docs/protocol.md)
    rotation: str = "per-sample"
    train_splits: tuple[str, ...] = ("train",)
    # "auto": the layout's official split when it has train + test, else seeded;
    # "official": the layout's split or an error; "seeded": the papers' 7:3 (see
    # bench.data.splits)
    split_mode: str = "auto"
    # masks stored as 0/1 (or other values): threshold at 128 instead of refusing them
    binarize: bool = False
    split_file: str | None = None
    split_seed: int = 42  # the data split's seed: fixed across training seeds
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    # model selection: best checkpoint by `select_metric` on `select_split` ("none": last)
    select_split: str = "val"
    select_metric: str = "loss"
    val_every: int = 1
    # final evaluation
    eval_split: str = "test"
    threshold: float = 0.5
    original_resolution: bool = False
    # HD95 convention: "monai" (max of the directed 95th percentiles) or "medpy" (95th
    # percentile of both directions pooled); see bench.engine.metrics
    hd95: str = "monai"
    # runtime
    device: str = "auto"
    amp: str | None = None
    # deterministic algorithms: None = on for CPU (bit-reproducible there), off on CUDA
    # (cuDNN autotuning; bilinear upsampling and adaptive pooling have no deterministic
    # CUDA backward, so a GPU run is not bit-reproducible either way)
    deterministic: bool | None = None
    threads: int | None = None
    # channels_last activations: None = on for CPU (MALUNet trains ~1.4x faster there:
    # depthwise convolutions and max-pooling are much slower in NCHW), off on CUDA
    # (never measured on a GPU: `segbench gpu-check` times both layouts; see docs/gpu.md)
    channels_last: bool | None = None
    cache_dir: str | None = None

    # ---------------------------------------------------------------- building

    @classmethod
    def from_recipe(cls, name_or_path: str | Path = "fair", **overrides: Any) -> TrainConfig:
        """A recipe (``fair``, ``paper`` or a YAML file) with keyword overrides on top.

        A recipe file may name another with ``inherit: <name or path>``.
        """
        values, source = _load_recipe(name_or_path)
        values.setdefault("recipe", Path(str(name_or_path)).stem)
        unknown = sorted(set(overrides) - _FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {_unknown_text(unknown)}")
        # coerce here so a bad override is reported as an override, not as the file's
        values.update({k: _coerce(k, v, "override") for k, v in overrides.items()})
        return cls.from_dict(values, source=source)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        unknown = sorted(set(values) - _FIELD_NAMES)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {_unknown_text(unknown)}")
        cfg = cls(**{k: _coerce(k, v, source) for k, v in values.items()})
        cfg.validate(source)
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "config") -> None:
        from bench.data.augment import SCALINGS
        from bench.data.splits import SPLIT_MODES
        from bench.engine.losses import LOSSES
        from bench.engine.metrics import HD95_CONVENTIONS

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{source}: {name}={getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "image_size", "val_every", "t_max"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        if not math.isfinite(self.lr) or self.lr > 1:
            # AdamW moves every weight by about lr per step: above 1 nothing trains, and
            # near 1e38 the step overflows float32 inside the optimizer (a traceback)
            raise bad("lr", "must be finite and <= 1")
        choices = {
            "select_split": ("val", "test", "none"),
            "select_metric": ("loss", "dsc"),
            "amp": (None, *AUTOCAST_DTYPES),
            "input_scaling": SCALINGS,
            "loss": LOSSES,
            "split_mode": SPLIT_MODES,
            "hd95": HD95_CONVENTIONS,
            "eval_split": ("val", "test"),
            "rotation": ROTATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"choose one of {', '.join(map(str, allowed))}")
        if not self.train_splits or set(self.train_splits) - {"train", "val"}:
            raise bad("train_splits", "a non-empty list of train and/or val")
        if self.select_split in self.train_splits:
            raise bad(
                "select_split", f"is also trained on (train_splits={list(self.train_splits)})"
            )
        # Only the paper reproduction (recipe "paper", or a "paper-<variant>" ablation of it)
        # may select on the test split / the split it scores; anything else would publish
        # test-selected numbers under a non-paper label.
        if not is_paper_recipe(self.recipe) and self.select_split in ("test", self.eval_split):
            raise bad(
                "select_split",
                f"recipe {self.recipe!r} must not select the checkpoint on the test split or "
                f"on the split it is scored on (eval_split={self.eval_split!r}); use "
                "recipe=paper to reproduce the authors' selection on the test split",
            )
        if not 0 < self.threshold < 1:
            raise bad("threshold", "must be in (0, 1)")
        if len(self.betas) != 2:
            raise bad("betas", "needs two values")
        for name, kw in self.per_model_kwargs.items():
            if not isinstance(kw, dict):
                raise bad("per_model_kwargs", f"the entry for {name!r} is not a mapping")

    # ---------------------------------------------------------------- identity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"], d["train_splits"] = list(self.betas), list(self.train_splits)
        return d

    @property
    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset
        if not self.data:
            raise ValueError("TrainConfig.data: no dataset root given (--data ROOT)")
        return dataset_label(self.data)

    @property
    def effective_t_max(self) -> int:
        """The cosine schedule's half period: ``t_max``, or the epoch budget when unset."""
        return self.t_max if self.t_max is not None else self.epochs

    @property
    def effective_model_kwargs(self) -> dict[str, Any]:
        """The builder kwargs this run's model gets: its ``per_model_kwargs`` entry, then
        ``model_kwargs`` on top."""
        return {**self.per_model_kwargs.get(self.model, {}), **self.model_kwargs}

    @property
    def config_hash(self) -> str:
        """sha256 prefix of the result-defining fields (stable across machines and paths).

        A field in :data:`LATER_FIELDS` enters only when it differs from its value before
        it existed, so adding a field does not change the hash of existing runs. The
        model's builder kwargs enter as :attr:`effective_model_kwargs` (other models'
        ``per_model_kwargs`` entries change nothing), so a recipe entry for MALUNet leaves
        the hash of every other model's runs as it was.
        """
        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in RUNTIME_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
        }
        d.pop("per_model_kwargs", None)
        d["model_kwargs"] = self.effective_model_kwargs
        d["dataset"] = self.dataset_name
        return _hash(d)

    @property
    def experiment_hash(self) -> str:
        """sha256 prefix of the result-defining fields except the seed.

        Runs with equal experiment hashes differ only in their training seed, so their
        results may be summarised as mean ± std over seeds; any other difference (``lr``,
        ``amp``, ``image_size``, ...) makes another experiment. The analysis recomputes it
        from each run's ``config.json`` with :func:`experiment_hash_of`.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_EXPERIMENT}
        d["dataset"] = self.dataset_name
        return _hash(d)


def _hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def experiment_hash_of(values: dict[str, Any], source: str = "config") -> str:
    """:attr:`TrainConfig.experiment_hash` of a stored configuration (a run's ``config.json``).

    Fields missing from ``values`` take today's defaults, so a run written before a field
    existed matches a new run that leaves it at its default. Keys TrainConfig no longer
    knows stay in the hash as they are: a setting that cannot be interpreted separates
    experiments rather than silently merging them. ``config_hash`` / ``experiment_hash``
    entries are ignored. A value TrainConfig rejects raises ValueError naming ``source``.
    """
    known = {k: v for k, v in values.items() if k in _FIELD_NAMES}
    unknown = {k: v for k, v in values.items() if k not in _FIELD_NAMES and k not in _HASH_KEYS}
    if not known.get("data") and not known.get("dataset"):
        raise ValueError(f"{source}: neither 'dataset' nor 'data' is set")
    cfg = TrainConfig.from_dict(known, source=source)
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_EXPERIMENT}
    d["dataset"] = cfg.dataset_name
    # JSON round trip: the stored lists compare like the tuples of a fresh config
    d.update(json.loads(json.dumps(unknown)))
    return _hash(d)


def dataset_label(root: str | Path) -> str:
    """A dataset's name in results: its folder's name, lower case, ``-`` for other
    characters. Letters and digits of any script are kept (``isic 2017 ü`` is
    ``isic-2017-ü``, not ``isic-2017``, which another folder could also map to); for ASCII
    names this is the rule runs were always recorded under."""
    return re.sub(r"[\W_]+", "-", Path(root).resolve().name.lower()).strip("-")


#: the settings that fix a dataset's split: config field -> keyword of
#: ``bench.data.cache.prepare_data`` / ``data_identity`` (the config's ``split_seed`` is
#: their ``seed``)
SPLIT_KEYWORDS = {
    "split_file": "split_file",
    "split_seed": "seed",
    "val_fraction": "val_fraction",
    "test_fraction": "test_fraction",
    "split_mode": "split_mode",
}


def split_kwargs(values: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The split keywords of ``prepare_data`` / ``data_identity`` from a config or a
    mapping (a recorded ``config.json``, ``segbench evaluate``'s settings; a field it
    lacks takes the :class:`TrainConfig` default), so training, its resume check and
    scoring fix a split from the same fields by the same names."""
    if isinstance(values, Mapping):
        return {
            kw: values.get(name, getattr(TrainConfig, name)) for name, kw in SPLIT_KEYWORDS.items()
        }
    return {kw: getattr(values, name) for name, kw in SPLIT_KEYWORDS.items()}


#: where / how fast to run: not part of the config hash (``data`` enters as its name)
RUNTIME_FIELDS = frozenset(
    {"data", "dataset", "device", "threads", "cache_dir", "deterministic", "channels_last"}
)


#: Fields added after runs were recorded, with the behaviour runs had before: left out of
#: the config hash at that value, and a config.json without them means that value.
LATER_FIELDS: dict[str, Any] = {
    "binarize": False,
    "loss": "bce_dice_logits",
    "scale_before_augment": False,
    "rotation": "per-sample",
    "split_mode": "auto",
    "hd95": "monai",
    "per_model_kwargs": {},
}


def with_later_defaults(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded ``config.json`` with the fields it predates filled in as
    :data:`LATER_FIELDS` says, so that comparing it with a newer config shows only the
    settings that really differ."""
    return {**LATER_FIELDS, **recorded}


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _unknown_text(unknown: list[str]) -> str:
    """``lr_max (did you mean: lr?)``, then the known keys: a typo names its fix."""
    import difflib

    parts = []
    for key in unknown:
        names = sorted(_FIELD_NAMES)
        close = (
            difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            or [n for n in names if key.startswith(n) or n.startswith(key)][:3]
        )
        parts.append(f"{key} (did you mean: {', '.join(close)}?)" if close else key)
    return f"{', '.join(parts)}; known: {', '.join(sorted(_FIELD_NAMES))}"


#: left out of the experiment hash: runtime fields and the training seed
_NOT_EXPERIMENT = RUNTIME_FIELDS | {"seed"}


_HASH_KEYS = frozenset({"config_hash", "experiment_hash"})


_HINTS = typing.get_type_hints(TrainConfig)


def _load_recipe(name_or_path: str | Path, depth: int = 0) -> tuple[dict[str, Any], str]:
    import yaml

    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
            raise ValueError(
                f"unknown recipe {str(name_or_path)!r}: use one of {known} or a YAML file path"
            )
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of TrainConfig fields")
    values.pop("description", None)
    parent = values.pop("inherit", None)
    if parent:
        if depth > 5:
            raise ValueError(f"{path}: 'inherit' nests too deep")
        ppath = Path(parent) if Path(parent).suffix else parent
        if isinstance(ppath, Path) and not ppath.is_absolute():
            ppath = path.parent / ppath
        base, _ = _load_recipe(ppath, depth + 1)
        values = {**base, **values}
    return values, str(path)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert YAML / command-line values to the field's declared type."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if value is None or (
        optional and isinstance(value, str) and value.lower() in ("none", "null", "")
    ):
        if optional:
            return None
        raise ValueError(f"{source}: {name} cannot be empty")
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError("expected true or false")
                return low in ("true", "1", "yes", "on")
            return bool(value)
        if origin is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if origin is float:
            return float(value)
        if origin is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.strip("[]() ").split(",") if v.strip()]
            elem = typing.get_args(hint)[0]
            return tuple(elem(v.strip() if isinstance(v, str) else v) for v in value)
        if origin is dict:
            if isinstance(value, str):
                import yaml

                value = yaml.safe_load(value) or {}
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in value.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {name}={value!r}: {err}") from None
    return value
