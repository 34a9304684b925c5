"""Test-time augmentation: a classifier that answers with the mean probability over the film and
eight small changes of it (scales 0.92 and 1.08, shifts of 4 px up, down, left and right, and
rotations of -5 and +5 degrees).

The views are part of the model's forward pass, so every consumer (the test and out-of-fold
scoring of training and the threshold chosen on them, evaluate, predict, serve, the ONNX export)
answers the same way. A model file asks for them in ``preprocessing.tta``, which training writes
when ``TrainConfig.tta`` is on (the ``small-data`` preset's default; the README has what it
gained and costs). Grad-CAM explains the film itself, not the views.

Below train, evaluate, predict and export; it imports only torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The views, as a model file records them (pixels at the model's input size, degrees).
TTA_VIEWS: dict[str, Any] = {"scales": [0.92, 1.08], "shift_px": 4, "degrees": 5}


class TTAViews(nn.Module):
    """``net`` run on the film and its views in one batch; ``forward`` returns the logit of the
    mean of their probabilities, so it stands wherever ``net`` did.

    >>> from cardiomegaly.model import build_model
    >>> TTAViews(build_model("resnet18"), 64).eval()(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2])
    """

    def __init__(
        self,
        net: nn.Module,
        image_size: int,
        scales: list[float] = TTA_VIEWS["scales"],
        shift_px: int = TTA_VIEWS["shift_px"],
        degrees: float = TTA_VIEWS["degrees"],
    ) -> None:
        super().__init__()
        self.net = net
        self.shift = int(shift_px)
        thetas = [[[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]] for s in scales]
        for a in (math.radians(-degrees), math.radians(degrees)):
            thetas.append([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        size = [len(thetas), 1, image_size, image_size]
        grids = F.affine_grid(torch.tensor(thetas), size, align_corners=False)
        self.register_buffer("grids", grids, persistent=False)

    @property
    def views(self) -> int:
        """How many images answer for one film (the film itself included)."""
        return 1 + len(self.grids) + (4 if self.shift else 0)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        b = x.shape[0]
        views = [x]
        for grid in self.grids:
            grid = grid.unsqueeze(0).expand(b, -1, -1, -1)
            views.append(F.grid_sample(x, grid, padding_mode="border", align_corners=False))
        if self.shift:
            views += [torch.roll(x, s, d) for s in (self.shift, -self.shift) for d in (2, 3)]
        logits = self.net(torch.cat(views)).float().view(len(views), b)
        out = logit_of_mean(torch.sigmoid(logits))
        return (out, None) if with_aux else out


def logit_of_mean(probabilities: torch.Tensor) -> torch.Tensor:
    """The logit of the mean over the first axis of ``probabilities`` (kept off 0 and 1): how
    several answers for one film, views or ensemble members, become one logit.

    >>> logit_of_mean(torch.tensor([[0.2], [0.8]]))
    tensor([0.])
    """
    p = probabilities.mean(0).clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


def with_tta(net: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """``net`` inside :class:`TTAViews` when its model file asks for test-time views
    (``preprocessing.tta``), else ``net`` itself."""
    pre = meta["preprocessing"]
    spec = pre.get("tta")
    if not spec:
        return net
    wrapped = TTAViews(net, int(pre["image_size"]), spec["scales"], spec["shift_px"],
                       spec["degrees"])  # fmt: skip
    return wrapped.to(next(net.parameters()).device).train(net.training)


def check_tta(spec: Any) -> None:
    """A model file's ``preprocessing.tta`` as training writes it (ValueError if not)."""
    if not isinstance(spec, dict) or set(spec) != set(TTA_VIEWS):
        raise ValueError(f"tta {spec!r} is not {sorted(TTA_VIEWS)}")
    if not all(float(s) > 0 for s in spec["scales"]):
        raise ValueError(f"tta scales {spec['scales']!r} must be positive")
    if int(spec["shift_px"]) < 0:
        raise ValueError(f"tta shift_px {spec['shift_px']!r} must be >= 0")
    float(spec["degrees"])  # a number
