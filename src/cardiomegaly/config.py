"""Typed configuration: dataclasses that load from and save to YAML.

Unknown keys fail with a suggestion, so a typo never silently falls back to a default::

    >>> from cardiomegaly.config import DataConfig, from_dict
    >>> from_dict(DataConfig, {"format": "nih", "views": ["PA"]}).views
    ['PA']
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, first_line
from .fileio import atomic_write_text

T = TypeVar("T")

FORMATS = ("nih", "chexpert", "mimic", "csv", "folder", "synthetic", "masks")
RESIZE_POLICIES = ("pad", "squash")
SCHEDULES = ("cosine", "plateau")
DEVICES = ("auto", "cpu", "cuda")
THRESHOLD_RULES = ("youden", "sens90", "spec90")
TASKS = ("classify", "segment")


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A config field with the help text (and command-line hints) that its flag shows."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class Columns:
    """Column names of a generic CSV (format ``csv``); empty means absent."""

    path: str = "path"
    label: str = "label"
    patient: str = ""
    view: str = ""
    sex: str = ""
    age: str = ""
    # Heart box as four columns: x_min, y_min, x_max, y_max (pixels of the stored image).
    box: list[str] = field(default_factory=list)
    # Mask files for the segment task: organ -> column, e.g. {heart: heart_mask, left_lung: ...}.
    masks: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the images are and how their rows become labelled records.

    Example data YAML for a generic CSV::

        format: csv
        csv: labels.csv
        image_root: images
        columns: {path: filename, label: label}
        patient_regex: '^(\\d+)_'
        positive: [Cardiomegaly]
        negative: [No Finding]
    """

    format: str | None = None  # detected from the files when empty
    root: str | None = None  # folder the relative paths hang from; default: the YAML's folder
    csv: str | None = None  # the main table (csv, nih, chexpert); detected for nih/chexpert/mimic
    bbox_csv: str | None = None  # NIH BBox_List_2017.csv; detected when next to the main table
    image_root: str | None = None  # where image paths are resolved; default: root
    columns: Columns = field(default_factory=Columns)
    positive: list[str] = field(default_factory=lambda: ["Cardiomegaly", "1", "positive"])
    negative: list[str] = field(default_factory=lambda: ["No Finding", "0", "negative"])
    # "no-finding": only No Finding rows are negatives; "all-others": every row without the finding.
    negatives: str = "no-finding"
    uncertain: str = "ignore"  # CheXpert/MIMIC -1.0: ignore | ones | zeros
    views: list[str] = field(default_factory=lambda: ["PA", "AP"])
    frontal_only: bool = True
    patient_regex: str | None = None  # first group (or whole match) of the file name is the patient
    # Phantoms generated on the fly (format synthetic without a phantoms.csv).
    n: int = 600
    size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(_unknown("format", self.format, FORMATS))
        if self.negatives not in ("no-finding", "all-others"):
            raise ConfigError(_unknown("negatives", self.negatives, ("no-finding", "all-others")))
        if self.uncertain not in ("ignore", "ones", "zeros"):
            raise ConfigError(_unknown("uncertain", self.uncertain, ("ignore", "ones", "zeros")))
        self.views = [v.upper() for v in self.views]
        bad = [v for v in self.views if v not in ("PA", "AP")]
        if bad or not self.views:
            raise ConfigError(f"views: {bad or self.views} is not a list of PA and/or AP")
        if self.columns.box and len(self.columns.box) != 4:
            raise ConfigError("columns.box: give four columns: x_min, y_min, x_max, y_max")


@dataclass
class SplitConfig:
    """Patient-wise, stratified train/val/test split."""

    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    split_file: str | None = None  # reuse an earlier splits.csv instead of drawing one

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(f"split fractions {fractions} must be non-negative and add up to 1")


@dataclass
class PreprocessConfig:
    """How an image becomes the model's input; written into every model file."""

    image_size: int = 299
    resize: str = "pad"  # pad: keep aspect ratio, black borders; squash: stretch to a square

    def __post_init__(self) -> None:
        if self.image_size < 75:
            raise ConfigError(f"image size {self.image_size} is under 75, InceptionV3's minimum")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(_unknown("resize", self.resize, RESIZE_POLICIES))


@dataclass
class AugmentConfig:
    """Training-only augmentation on tensors (torchvision transforms v2)."""

    rotation: float = 10.0  # degrees, either way
    translate: float = 0.05  # fraction of the image, each axis
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    brightness: float = 0.1  # multiplicative, 1 +- this
    contrast: float = 0.1
    gamma: float = 0.15  # exponent in exp(+- this)
    hflip: bool = False  # off: the heart sits on the patient's left

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(
                f"augment.scale: {self.scale} is not [low, high] with 0 < low <= high"
            )


#: What label 0 and label 1 mean, in every model file and prediction.
CLASS_NAMES = ["no cardiomegaly", "cardiomegaly"]

#: Presets fill in what the user did not say. "demo": phantoms, small images, a few epochs,
#: from scratch (offline) - the demo and CPU-only users.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "data": "synthetic",
        "data_config": {"n": 600, "size": 192},
        "weights": "none",
        "image_size": 128,
        "epochs": 12,
        "batch_size": 32,
        "patience": 12,
    },
    # A classifier for a few hundred films without ImageNet weights: the segment model's U-Net
    # encoder, started from that model (--weights SEGMODEL: trained on heart and lung masks, e.g.
    # JSRT's), on films that model cuts to the thorax, 3 epochs head only, then every layer at
    # lr 1e-3 (benchmarks/recipes_nih.py), 32 epochs with the weights averaged over about the
    # last 200 steps (docs/experiments.md: two trainings against other findings, +0.019, +0.014),
    # at 192 px: the cut then shows the anatomy at about the scale the encoder learnt it on whole
    # 256 px films (docs/experiments.md: two trainings, 256 px against 192 px).
    "small-data": {
        "arch": "unet_encoder",
        "image_size": 192,
        "epochs": 32,
        "batch_size": 32,
        "head_epochs": 3,
        "unfreeze": ["all"],
        "backbone_lr": 1e-3,
        "ema": 0.995,
        "thorax_crop": "weights",
        "tta": True,
    },
    # Heart and lung masks from scratch: a 16-channel U-Net at 256 px (the JSRT recipe).
    "segment": {
        "task": "segment",
        "arch": "unet",
        "weights": "none",
        "image_size": 256,
        "epochs": 30,
        "batch_size": 8,
        "lr": 2e-3,
        "patience": 10,
    },
}


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as ``config.yaml`` in the run folder."""

    data: str | list[str] = field(default="", metadata={
        "help": "data folder, CSV, data YAML, or 'synthetic'; give it again for several sources",
        "kind": "append"})  # fmt: skip
    task: str = _opt("classify", "classify (cardiomegaly probability) or segment (heart and "
                     "lungs, for the cardiothoracic ratio) (classify)", choices=TASKS)  # fmt: skip
    arch: str = _opt("inception_v3", "network: %(choices)s (inception_v3; unet for segment)",
                     choices="archs")  # fmt: skip
    width: int = _opt(16, "segment: channels of the U-Net's first level (16)", kind="positive")
    weights: str = _opt("imagenet", "imagenet (default), none, or a weights / model file")
    image_size: int = _opt(299, "model input, pixels per side (299; 256 for segment)",
                           kind="positive")  # fmt: skip
    resize: str = _opt(
        "pad", "pad: keep the aspect ratio; squash: stretch (pad)", choices=RESIZE_POLICIES
    )
    epochs: int = _opt(30, "epochs (30)", kind="positive")
    batch_size: int = _opt(32, "images per batch (32)", kind="positive")
    head_epochs: int = _opt(
        3, "stage 1 epochs: head only, backbone frozen, with pretrained weights (3)"
    )
    unfreeze: list[str] = field(
        default_factory=lambda: ["Mixed_6", "Mixed_7"],
        metadata={"help": "stage 2 blocks, comma-separated, or 'all' (Mixed_6,Mixed_7)"},
    )
    lr: float = _opt(1e-3, "head (stage 1) and from-scratch learning rate (1e-3)")
    backbone_lr: float = _opt(1e-4, "learning rate of the unfrozen blocks in stage 2 (1e-4)")
    weight_decay: float = _opt(1e-4, "AdamW weight decay (1e-4)")
    schedule: str = _opt("cosine", "learning-rate schedule (cosine)", choices=SCHEDULES)
    patience: int = _opt(
        8, "early stopping on validation AUROC after this many epochs (8)", kind="positive"
    )
    dropout: float = _opt(0.5, "dropout before the output layer (0.5)")
    ema: float = _opt(0.0, "average of the weights over the steps, this decay per step (0: off; "
                      "0.99: about the last 100 steps); validated, saved and resumed")  # fmt: skip
    aux_logits: bool = _opt(False, "InceptionV3's auxiliary classifier, loss weight 0.4 (299 px)")
    balanced_sampler: bool = _opt(False, "balanced batches instead of the loss weight")
    threshold_rule: str = _opt("youden", "youden (default), sens90, spec90 or fixed:X")
    calibrate: bool = _opt(
        False, "fit temperature scaling on validation; store it in the model file"
    )
    export_onnx: bool = _opt(
        True, "write model.onnx beside the model file: predict's fast CPU path"
    )
    tta: bool = _opt(
        False,
        "test-time augmentation: answer with the mean probability over the film and "
        "eight small changes of it (scales, 4 px shifts, +-5 degrees), in the test and "
        "out-of-fold scoring and the threshold chosen on them and in every later use; the "
        "model file carries it (the small-data preset's)",
    )
    folds: int = _opt(1, "K-fold patient-wise cross-validation: K models, out-of-fold "
                      "predictions for every film, and their ensemble (1: one split)",
                      kind="positive")  # fmt: skip
    ctr_model: str | None = _opt(
        None,
        "with --folds: a segment model; its ratio is merged with the out-of-fold "
        "probability into a combined score (ranks within each view), kept in the ensemble",
    )
    thorax_crop: str | None = _opt(
        None,
        "a segment model (or 'weights': the one given as --weights; 'none': whole films): "
        "every film is cut to the square around the heart and lungs it finds (a tenth wider "
        "on each side) before the classifier sees it, in training and in every later use; "
        "the model file carries it",
    )
    seed: int = _opt(0, "random seed (0)")
    device: str = _opt("auto", "auto: CUDA when there is one (auto)", choices=DEVICES)
    workers: int = _opt(0, "data-loading processes (0)")
    cache_dir: str | None = _opt(None, "preprocessing cache (default: user cache folder)")
    preset: str | None = _opt(
        None,
        "demo: phantoms, {demo}; small-data: the U-Net encoder from a segment model "
        "(--weights SEGMODEL) on films it cuts to the thorax, {small-data}, weights "
        "averaged; segment: U-Net, {segment} (implied by --task segment)".format_map(
            {name: f"{p['image_size']} px, {p['epochs']} epochs" for name, p in PRESETS.items()}
        ),
        choices="presets",
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data_config: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides: Any) -> TrainConfig:
        """Defaults, then the preset, then ``overrides`` (None means "not said").

        >>> TrainConfig.from_preset("demo", epochs=3).image_size
        128
        """
        values: dict[str, Any] = {}
        if preset is None and overrides.get("task") == "segment":
            preset = "segment"  # the segment task's own defaults
        if preset:
            if preset not in PRESETS:
                raise ConfigError(_unknown("preset", preset, PRESETS))
            values.update(PRESETS[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["preset"] = preset
        return from_dict(cls, values)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(_unknown("task", self.task, TASKS))
        if self.task == "classify":
            PreprocessConfig(self.image_size, self.resize)  # validates both
        elif self.resize not in RESIZE_POLICIES:
            raise ConfigError(_unknown("resize", self.resize, RESIZE_POLICIES))
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.head_epochs < 0 or self.patience < 1 or self.workers < 0:
            raise ConfigError("head_epochs and workers must be >= 0, patience >= 1")
        if self.schedule not in SCHEDULES:
            raise ConfigError(_unknown("schedule", self.schedule, SCHEDULES))
        if self.device not in DEVICES:
            raise ConfigError(_unknown("device", self.device, DEVICES))
        check_threshold_rule(self.threshold_rule)
        if self.aux_logits and (self.arch != "inception_v3" or self.image_size < 299):
            raise ConfigError("aux_logits needs --arch inception_v3 and --image-size 299 or more")
        if self.folds < 1:
            raise ConfigError(f"folds must be at least 1, not {self.folds}")
        if self.folds > 1 and self.task != "classify":
            raise ConfigError(
                "folds: cross-validation trains classifiers; for segmentation see "
                "benchmarks/segment_jsrt.py"
            )
        if self.ctr_model and self.folds < 2:
            raise ConfigError(
                "ctr_model: the combined score is calibrated on out-of-fold predictions; "
                "give --folds K (K >= 2) with it"
            )
        if self.thorax_crop == "none":
            self.thorax_crop = None
        if self.thorax_crop and self.task != "classify":
            raise ConfigError("thorax_crop: films are cut for the classify task")
        if self.thorax_crop == "weights":
            if self.weights in ("imagenet", "none"):
                raise ConfigError(
                    f"thorax_crop: films are cut by the segment model given as --weights, and "
                    f"--weights is {self.weights}: give --weights SEGMODEL (a model of "
                    f"'train --task segment'), or --thorax-crop none for whole films"
                )
            self.thorax_crop = self.weights
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), not {self.ema}")
        if self.ema and self.task != "classify":
            raise ConfigError("ema: the weight average is for the classify task")
        if self.tta and self.task != "classify":
            raise ConfigError("tta: test-time views are for the classify task")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")


def check_threshold_rule(rule: str) -> None:
    """A rule by name, or ``fixed:X`` with X a probability; anything else fails now, not after
    the whole run.

    >>> check_threshold_rule("fixed:0.3")
    >>> check_threshold_rule("fixed:1.5")
    Traceback (most recent call last):
    ...
    cardiomegaly.errors.ConfigError: threshold_rule: fixed:1.5 is not a probability in [0, 1]
    """
    rule = str(rule)
    if rule in THRESHOLD_RULES:
        return
    if rule.startswith("fixed:"):
        try:
            value = float(rule[len("fixed:") :])
        except ValueError:
            value = float("nan")
        if not 0 <= value <= 1:  # NaN fails here too
            raise ConfigError(f"threshold_rule: {rule} is not a probability in [0, 1]")
        return
    raise ConfigError(
        f"threshold_rule: unknown value '{rule}' (choose {', '.join(THRESHOLD_RULES)} or fixed:X)"
    )


def _unknown(what: str, value: Any, choices: typing.Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{what}: unknown value '{value}' (choose from {', '.join(choices)}){hint}"


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, refusing unknown keys with a suggestion.

    >>> from_dict(SplitConfig, {"seed": 3}).seed
    3
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):  # `split: 0.7` where a mapping belongs
        label = where.rstrip(". ").rstrip(":") or cls.__name__
        raise ConfigError(f"{label}: expected a mapping of keys to values, not {data!r}")
    data = dict(data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{where}{key}: unknown key{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            value = from_dict(kind, value, where=f"{where}{key}.")
        elif _is_list(kind, str) and isinstance(value, str) and _is_union_with(kind, str):
            pass  # `data: folder` stays one source; `data: [a, b]` is several
        elif _is_list(kind, str) and isinstance(value, (str, int, float)):
            value = [str(value)]  # `views: PA` means [PA]
        elif _is_list(kind, str) and isinstance(value, list):
            value = [str(v) for v in value]  # label values like 1 or 0 compare as text
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a value of the wrong type reaching __post_init__
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _is_union_with(kind: Any, item: type) -> bool:
    """Whether ``kind`` is a union that takes ``item`` itself (``str | list[str]``)."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    return union and item in typing.get_args(kind)


def _is_list(kind: Any, item: type) -> bool:
    """Whether ``kind`` is ``list[item]`` (or an optional one)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_is_list(a, item) for a in typing.get_args(kind))
    return typing.get_origin(kind) is list and typing.get_args(kind) == (item,)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a file that is not one fails with its name."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = first_line(exc)
        raise ConfigError(f"{path}: not a readable YAML file ({first})") from None
    if data is None:
        raise ConfigError(f"{path}: is empty; give a YAML mapping of keys to values")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of keys to values")
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass (or dict) as YAML, atomically."""
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
