"""The network, its pretrained weights, freezing, and the model file.

A model owns its preprocessing: :func:`preprocessing_for` says what input an architecture wants,
and the model file records it, so every consumer reads it back instead of re-declaring it.

    >>> net = build_model("inception_v3")
    >>> net(torch.rand(2, 1, 75, 75)).shape
    torch.Size([2])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import require_task
from .config import CLASS_NAMES, PreprocessConfig
from .errors import UserError
from .fileio import FILE_MODE, sha256_of
from .tta import check_tta, logit_of_mean
from .unet import UNetEncoder, encoder_state

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: What a model file can be; consumers dispatch on its ``task``.
TASKS = ("classify", "segment")
_METADATA_KEY = "cardiomegaly"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_ENCODER_WIDTH = 16  # unet_encoder's: the segment preset's U-Net


@dataclass(frozen=True)
class Arch:
    """What the registry knows about one backbone."""

    build: Callable[[bool], nn.Module]  # aux_logits -> torchvision model (random weights)
    weights: Any  # torchvision weights enum member for --weights imagenet (None: there are none)
    head: tuple[str, ...]  # parameter-name prefixes of the head(s), trained from stage 1
    new: tuple[str, ...]  # prefixes of the layers we replace (never loaded from ImageNet)
    top_blocks: tuple[str, ...]  # unfrozen in stage 2 by default
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_size: int
    cam_layers: tuple[str, ...]  # Grad-CAM candidates, the last block first


def _inception(aux: bool) -> nn.Module:
    net = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=True)
    # ImageNet weights expect transform_input; we fold it into the recorded mean/std instead
    # (x * 0.5 + 0.5 after ImageNet normalisation is the same as (x - 0.5) / 0.5).
    net.transform_input = False
    net.fc = nn.Linear(net.fc.in_features, 1)
    if aux:
        net.AuxLogits.fc = nn.Linear(net.AuxLogits.fc.in_features, 1)
    return net


def _densenet(aux: bool) -> nn.Module:
    net = torchvision.models.densenet121(weights=None)
    net.classifier = nn.Linear(net.classifier.in_features, 1)
    return net


def _resnet(aux: bool) -> nn.Module:
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


def _resnet18(aux: bool) -> nn.Module:
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


def _unet_encoder(aux: bool) -> nn.Module:
    return UNetEncoder(_ENCODER_WIDTH)


ARCHS: dict[str, Arch] = {
    "inception_v3": Arch(
        _inception,
        torchvision.models.Inception_V3_Weights.IMAGENET1K_V1,
        head=("fc.", "AuxLogits."),
        new=("fc.", "AuxLogits.fc."),
        top_blocks=("Mixed_6", "Mixed_7"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        min_size=75,
        cam_layers=("Mixed_7c", "Mixed_6e", "Mixed_5d"),
    ),
    "densenet121": Arch(
        _densenet,
        torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
        head=("classifier.",),
        new=("classifier.",),
        top_blocks=("features.denseblock4", "features.norm5"),
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        min_size=29,
        cam_layers=("features.denseblock4", "features.denseblock3"),
    ),
    "resnet50": Arch(
        _resnet,
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
        head=("fc.",),
        new=("fc.",),
        top_blocks=("layer4",),
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        min_size=32,
        cam_layers=("layer4", "layer3"),
    ),
}
# A small network (11 M parameters, a fifth of ResNet-50's work) for few films from scratch.
ARCHS["resnet18"] = dataclasses.replace(
    ARCHS["resnet50"], build=_resnet18, weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1
)
# The segment task's U-Net encoder (1.3 M parameters; the small-data preset): no ImageNet
# weights, it starts from a segment model's encoder (--weights SEGMODEL). Each film is
# standardised inside the network, so the mean and std here only pass grey through.
ARCHS["unet_encoder"] = Arch(
    _unet_encoder,
    None,
    head=("fc.",),
    new=("fc.",),
    top_blocks=("encoder",),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    min_size=16,
    cam_layers=("encoder.4", "encoder.3"),
)


class CardioNet(nn.Module):
    """A backbone with a one-logit head that takes grey images in [0, 1], shape (B, 1, H, W).

    Channel replication and intensity normalisation happen here and nowhere else. ``forward``
    returns logits of shape (B,) in train and eval mode alike; the auxiliary logits (InceptionV3,
    training only) come from ``forward(x, with_aux=True)``.
    """

    def __init__(self, arch: str = "inception_v3", dropout: float = 0.5, aux_logits: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
        spec = ARCHS[arch]
        self.arch = arch
        self.aux_logits = aux_logits and arch == "inception_v3"
        self.dropout_p = dropout
        self.net = spec.build(self.aux_logits)
        _set_dropout(self.net, dropout)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self._frozen_bn: list[nn.Module] = []

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """Logits (B,); with ``with_aux``, (logits, auxiliary logits or None).

        The auxiliary logits exist for InceptionV3 with ``aux_logits`` in training mode.
        """
        out = self.net(self._prepare(x))
        aux = None
        if isinstance(out, tuple):  # torchvision's InceptionOutputs(logits, aux_logits)
            out, aux = out
            aux = None if aux is None else aux.squeeze(1)
        return (out.squeeze(1), aux) if with_aux else out.squeeze(1)

    def describe(self) -> dict[str, Any]:
        """What the model file records to rebuild this network."""
        return {"name": self.arch, "dropout": self.dropout_p, "aux_logits": self.aux_logits}

    def train(self, mode: bool = True) -> CardioNet:
        super().train(mode)
        for module in self._frozen_bn:  # frozen blocks keep their batch-norm statistics
            module.eval()
        return self

    def set_trainable(self, blocks: str | tuple[str, ...]) -> int:
        """Train the head plus ``blocks``: "head", "all", or parameter-name prefixes.

        Frozen parameters get ``requires_grad=False`` and their batch-norm layers stay in eval
        mode, so their running statistics do not move either. Returns the trainable count.
        """
        spec = ARCHS[self.arch]
        prefixes: tuple[str, ...]
        if blocks == "all":
            prefixes = ("",)
        elif blocks == "head":
            prefixes = spec.head
        else:
            prefixes = spec.head + tuple(blocks)
        self._frozen_bn = []
        trainable = 0
        for name, module in self.net.named_modules():
            frozen = name and not any(name.startswith(p.rstrip(".")) for p in prefixes)
            if frozen and isinstance(module, nn.modules.batchnorm._BatchNorm):
                self._frozen_bn.append(module)
        for name, param in self.net.named_parameters():
            param.requires_grad = any(name.startswith(p) for p in prefixes)
            trainable += param.numel() if param.requires_grad else 0
        self.train(self.training)
        return trainable

    def cam_targets(self, name: str) -> list[nn.Module]:
        """The module called ``name`` in the backbone, for Grad-CAM (AttributeError if none)."""
        return [self.net.get_submodule(name)]

    def head_parameters(self) -> list[nn.Parameter]:
        spec = ARCHS[self.arch]
        return [p for n, p in self.net.named_parameters() if n.startswith(spec.head)]

    def backbone_parameters(self) -> list[nn.Parameter]:
        spec = ARCHS[self.arch]
        return [p for n, p in self.net.named_parameters() if not n.startswith(spec.head)]


class Ensemble(nn.Module):
    """Members of one architecture (the K models of a cross-validation) as one classifier: the
    probability is the mean of the members' probabilities, each with its own calibration
    temperature. ``forward`` returns the logit of that mean, so every consumer (predict, ONNX,
    serve) treats an ensemble like any model; Grad-CAM averages the members' maps.

    >>> ens = Ensemble([build_model("resnet50"), build_model("resnet50")])
    >>> ens.eval()(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2])
    """

    def __init__(self, members: list[CardioNet], temperatures: list[float] | None = None):
        super().__init__()
        if not members or len({m.arch for m in members}) != 1:
            raise UserError("an ensemble needs members of one architecture")
        self.arch = members[0].arch
        self.net = nn.ModuleList(members)
        t = torch.tensor(temperatures or [1.0] * len(members), dtype=torch.float32)
        self.register_buffer("temperatures", t.view(-1, 1), persistent=False)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        logits = torch.stack([m(x) for m in self.net]).float()
        out = logit_of_mean(torch.sigmoid(logits / self.temperatures))
        return (out, None) if with_aux else out

    def describe(self) -> dict[str, Any]:
        """What the model file records to rebuild this ensemble."""
        first = self.net[0].describe()
        return {**first, "members": len(self.net),
                "temperatures": [round(float(t), 6) for t in self.temperatures.flatten()],
                "combine": "mean of the members' probabilities"}  # fmt: skip

    def cam_targets(self, name: str) -> list[nn.Module]:
        """The module called ``name`` in every member's backbone."""
        return [m.net.get_submodule(name) for m in self.net]


def _set_dropout(net: nn.Module, p: float) -> None:
    if isinstance(getattr(net, "dropout", None), nn.Dropout):
        net.dropout.p = p  # InceptionV3's own dropout before fc
        return
    for attr in ("classifier", "fc"):
        layer = getattr(net, attr, None)
        if isinstance(layer, nn.Linear):
            setattr(net, attr, nn.Sequential(nn.Dropout(p), layer))
            return


def build_model(arch: str = "inception_v3", dropout: float = 0.5, aux_logits: bool = False):
    """A randomly initialised :class:`CardioNet`.

    >>> build_model("resnet50").arch
    'resnet50'
    """
    return CardioNet(arch, dropout=dropout, aux_logits=aux_logits)


def preprocessing_for(arch: str, image_size: int, resize: str) -> dict[str, Any]:
    """The preprocessing a model of ``arch`` was trained with, as the model file records it."""
    spec = ARCHS[arch]
    return {
        "image_size": image_size,
        "resize": resize,
        "input": "grey float in [0, 1], 0 = black as displayed (DICOM VOI applied)",
        "channels": "grey replicated to 3 inside the model",
        "mean": list(spec.mean),
        "std": list(spec.std),
        "normalised_inside_model": True,
    }


# ------------------------------------------------------------------------------------- weights


def load_weights(model: CardioNet, source: str) -> dict[str, Any]:
    """Load ``source`` (imagenet | none | a file) into ``model``; return what to record.

    A file may be torchvision's own checkpoint (its SHA-256 must match the hash in its published
    name), any other state dict whose keys and shapes match the backbone, or one of our own
    ``model.safetensors`` files: a classifier's (fine-tuning a previous model, head included) or,
    for ``unet_encoder``, a segment model's (its encoder; the head stays new).
    """
    spec = ARCHS[model.arch]
    if source == "none":
        if spec.weights is None:
            log.warning("%s from random weights learnt little on the NIH sample; start it from "
                        "a segment model (--weights SEGMODEL)", model.arch)  # fmt: skip
        return {"source": "none"}
    if source == "imagenet":
        if spec.weights is None:
            raise UserError(
                f"{model.arch} has no ImageNet weights; start it from a segment model (--weights "
                "SEGMODEL, from cardiomegaly train --task segment) or from scratch (--weights none)"
            )
        state = _download_imagenet(spec, model.arch)
        _load_backbone(model, state, f"torchvision {spec.weights}")
        return {"source": "imagenet", "torchvision_weights": str(spec.weights)}
    path = Path(source)
    if not path.is_file():
        raise UserError(f"--weights {source}: no such file; use imagenet, none, or a weights file")
    digest = sha256_of(path)
    if is_model_file(path):
        state, meta = load_state(path)
        if meta.get("task") == "segment":
            _load_segment_encoder(model, state, meta, path)
            return {"source": "segment model", "file": path.name, "sha256": digest}
        if meta["architecture"]["name"] != model.arch:
            raise UserError(
                f"{path}: a {meta['architecture']['name']} model, not {model.arch}; pass "
                f"--arch {meta['architecture']['name']}"
            )
        _load_exact(model.net, state, path)
        return {"source": "model file", "file": path.name, "sha256": digest}
    # torchvision's file name, e.g. inception_v3_google-0cc3c7bd.pth
    published = Path(spec.weights.url).name if spec.weights is not None else None
    if path.name == published:
        expected = published.rsplit("-", 1)[1].split(".")[0]
        if not digest.startswith(expected):
            raise UserError(
                f"{path}: SHA-256 {digest[:12]}... does not match torchvision's published "
                f"{expected}; the file is damaged or not the original, download it again"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a PyTorch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a PyTorch state dict")
    _load_backbone(model, state, str(path))
    return {
        "source": "file",
        "file": path.name,
        "sha256": digest,
        "torchvision_published": path.name == published,
    }


def _download_imagenet(spec: Arch, arch: str) -> dict[str, torch.Tensor]:
    try:
        return spec.weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash errors: all mean "not here"
        published = Path(spec.weights.url).name
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"cannot download the ImageNet weights of {arch} ({type(exc).__name__}); offline, "
            f"copy torchvision's {published} into {hub} (then --weights imagenet works) or "
            f"pass --weights /path/to/{published}, or train from scratch with --weights none"
        ) from None


def _load_backbone(model: CardioNet, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy every backbone tensor; the output layers are ours (one logit) and stay new."""
    state = _densenet_keys(state) if model.arch == "densenet121" else state
    spec = ARCHS[model.arch]
    own = {k: v for k, v in model.net.state_dict().items() if not k.startswith(spec.new)}
    theirs = {k: v for k, v in state.items() if not k.startswith(spec.new)}
    missing = sorted(set(own) - set(theirs))
    if missing:
        raise UserError(
            f"{where}: not {model.arch} weights ({len(missing)} tensors missing, e.g. "
            f"{missing[0]}); check --arch"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(theirs[k].shape)]
    if bad:
        raise UserError(
            f"{where}: shape of {bad[0]} is {tuple(theirs[bad[0]].shape)}, expected "
            f"{tuple(own[bad[0]].shape)}; not {model.arch} weights"
        )
    model.net.load_state_dict({**model.net.state_dict(), **{k: theirs[k] for k in own}})


def _load_segment_encoder(
    model: CardioNet, state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path
) -> None:
    """A segment model's encoder into a ``unet_encoder`` classifier (its head stays new)."""
    arch = meta["architecture"]
    if model.arch != "unet_encoder":
        raise UserError(f"{path}: a segment model; only --arch unet_encoder starts from one")
    if arch["name"] != "unet" or int(arch.get("width", 16)) != _ENCODER_WIDTH:
        raise UserError(
            f"{path}: a {arch['name']} of width {arch.get('width')}; unet_encoder starts from a "
            f"unet of width {_ENCODER_WIDTH} (the segment preset's)"
        )
    _load_backbone(model, encoder_state(state, _ENCODER_WIDTH), str(path))


def _densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's DenseNet checkpoints use old names ('norm.1'); map them as torchvision does."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    return {(pattern.sub(r"\1\2", k) if pattern.match(k) else k): v for k, v in state.items()}


def _load_exact(net: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    own = net.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise UserError(f"{where}: weights do not fit this architecture and head")
    net.load_state_dict(state)


# ---------------------------------------------------------------------------------- model file


#: A classifier's file carries the segment model that cuts its films to the thorax
#: (``preprocessing.thorax_crop``): that model's tensors, their names under this prefix.
EMBEDDED_PREFIX = "thorax_crop."


def save_model(
    path: str | Path,
    model: nn.Module,
    metadata: dict[str, Any],
    embedded: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write weights and metadata to one ``model.safetensors``, atomically. The model says how
    to rebuild it (``describe()``); ``metadata`` may set ``task`` and ``classes`` (a segment
    model does), else the file is a classifier's. ``embedded``: the weights of the segment model
    that cuts its films (:data:`EMBEDDED_PREFIX`), which make the file self-contained."""
    meta = {
        "format_version": FORMAT_VERSION,
        "task": "classify",
        "architecture": model.describe(),
        "classes": CLASS_NAMES,
        **metadata,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    for k, v in (embedded or {}).items():
        state[EMBEDDED_PREFIX + k] = v.detach().contiguous().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={_METADATA_KEY: json.dumps(meta)})
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except Exception:
        raise UserError(f"{path}: not a safetensors model file") from None
    if _METADATA_KEY not in header:
        raise UserError(f"{path}: a safetensors file, but not a cardiomegaly model file")
    try:
        meta = json.loads(header[_METADATA_KEY])
    except json.JSONDecodeError:
        raise UserError(f"{path}: model metadata is not valid JSON (file edited?)") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: model file format {version}, this cardiomegaly reads {FORMAT_VERSION}; "
            "use the version that wrote it"
        )
    task = meta.get("task", "classify")  # files of the first release say nothing: classifiers
    if task not in TASKS:
        raise UserError(f"{path}: model metadata is not valid (task {task!r}; file edited?)")
    for key in ("architecture", "preprocessing", *(("threshold",) if task == "classify" else ())):
        if key not in meta:
            raise UserError(f"{path}: model metadata lacks '{key}' (file edited?)")
    _check_metadata(path, meta, task)
    return meta


def _check_metadata(path: Path, meta: dict[str, Any], task: str) -> None:
    """The fields every consumer relies on have the types and ranges training writes."""
    try:
        pre = meta["preprocessing"]
        if not isinstance(pre["image_size"], int):
            raise ValueError(f"image_size {pre['image_size']!r} is not a whole number")
        if task == "segment":  # its network registry lives with the segment task
            return
        if meta["architecture"]["name"] not in ARCHS:
            raise ValueError(f"unknown architecture {meta['architecture']['name']!r}")
        PreprocessConfig(pre["image_size"], pre["resize"])
        if pre.get("thorax_crop"):
            crop = pre["thorax_crop"]
            if not 0 <= float(crop["margin"]) < 1 or not isinstance(crop["sha256"], str):
                raise ValueError(f"thorax_crop {crop.get('margin')!r}, {crop.get('sha256')!r}")
            if not isinstance(crop["segment_model"]["architecture"]["name"], str):
                raise ValueError("thorax_crop: its segment model has no architecture")
        if pre.get("tta"):
            check_tta(pre["tta"])
        if not 0 <= float(meta["threshold"]["value"]) <= 1:
            raise ValueError(f"threshold {meta['threshold']['value']} is not in [0, 1]")
    except (KeyError, TypeError, ValueError, UserError) as exc:
        raise UserError(f"{path}: model metadata is not valid ({exc}; file edited?)") from None


def is_model_file(path: str | Path) -> bool:
    try:
        read_metadata(path)
    except UserError:
        return False
    return True


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights (a state dict on the CPU) and the metadata of a model file of either task."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(path, device="cpu")
    except Exception:
        raise UserError(f"{path}: model weights cannot be read (truncated file?)") from None
    return state, meta


def split_embedded(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model file's tensors: the network's own, and the embedded segment model's (unprefixed).

    >>> split_embedded({"a": 1, "thorax_crop.b": 2})
    ({'a': 1}, {'b': 2})
    """
    own = {k: v for k, v in state.items() if not k.startswith(EMBEDDED_PREFIX)}
    embedded = {k[len(EMBEDDED_PREFIX) :]: v for k, v in state.items() if k not in own}
    return own, embedded


def load_embedded(path: str | Path) -> dict[str, torch.Tensor]:
    """The segment model a classifier's file carries (unprefixed; empty when it has none), read
    without the classifier's own tensors."""
    try:
        with safe_open(Path(path), framework="pt", device="cpu") as f:
            names = [k for k in f.keys() if k.startswith(EMBEDDED_PREFIX)]  # noqa: SIM118
            return {k[len(EMBEDDED_PREFIX) :]: f.get_tensor(k) for k in names}
    except Exception:
        raise UserError(f"{path}: model weights cannot be read (truncated file?)") from None


def load_model(path: str | Path) -> tuple[CardioNet | Ensemble, dict[str, Any]]:
    """A model file back as an eval-mode :class:`CardioNet` (or the :class:`Ensemble` that
    ``train --folds`` writes) and its metadata.

    >>> net, meta = load_model("runs/train/exp/model.safetensors")    # doctest: +SKIP
    >>> meta["preprocessing"]["image_size"], meta["threshold"]["value"]  # doctest: +SKIP
    (299, 0.41)
    """
    state, meta = load_state(path)
    require_task(meta, "classify", path)
    state, _ = split_embedded(state)
    arch = meta["architecture"]

    def member() -> CardioNet:
        return CardioNet(arch["name"], dropout=arch.get("dropout", 0.5),
                         aux_logits=arch.get("aux_logits", False))  # fmt: skip

    if "members" in arch:
        model: CardioNet | Ensemble = Ensemble(
            [member() for _ in range(int(arch["members"]))], arch.get("temperatures")
        )
    else:
        model = member()
    _load_exact(model.net, state, Path(path))
    return model.eval(), meta
