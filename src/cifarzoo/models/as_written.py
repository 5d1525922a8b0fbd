"""The original Keras study's networks AS WRITTEN, bugs included, to replay and explain its failure.

These are NOT the zoo's networks: they are registered with ``as_written=True``, so that
``list_models()``, the default studies and the registry-wide tests leave them out
(``cifarzoo models --all`` lists them). The study's notebook is not part of this
repository; each docstring follows the description of its Keras code in the project's
issue 24 ("The original study, replayed and explained") line by line.

What Keras does and PyTorch does not, reproduced here:

* **Initializers**: Keras' defaults, Glorot-uniform kernels and zero biases
  (:func:`keras_init`); convolutions and dense layers keep their biases.
* **BatchNormalization**: Keras' ``momentum=0.99`` (PyTorch's 0.01) and ``epsilon=1e-3``.
* **The loss**: the study compiled every network with ``sparse_categorical_crossentropy``
  (``from_logits=False``): a loss that expects probabilities. A network declares what its
  outputs are in ``self.outputs``: ``"probabilities"`` (a softmax ends it) or
  ``"unbounded"`` (a plain ``Dense(10)``, the ResNet). For both the trainer computes
  :func:`keras_probability_loss`: the outputs clipped into [1e-7, 1 - 1e-7], divided by
  their sum, and the negative log of the label's share. Clipping first makes any output
  outside that range a constant: it gets no gradient. A ResNet whose nine outputs went
  above 1 and one below 1e-7 for every image is frozen at exactly
  ``0.9 ln 9 + 0.1 (ln 9 + ln 1e7) = 3.8090`` with 10% accuracy: the study's printed loss
  (nine outputs clipped to 1 - 1e-7 share 1/9 each; the tenth, 1e-7/9).
  ``outputs = "logits"`` (an ablation's fix) is the zoo's plain cross-entropy on logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarzoo.models.registry import register_model, scale_width
from cifarzoo.recipe_kit import AS_WRITTEN_RECIPE
from cifarzoo.models.vgg import CONFIGS
from cifarzoo.models.xception import ENTRY, EXIT, HEAD, MIDDLE, SeparableConv2d, XceptionBlock

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()
OUTPUT_KINDS = ("logits", "probabilities", "unbounded")


def keras_probability_loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keras' ``sparse_categorical_crossentropy(from_logits=False)`` on ``(B, C)`` outputs: batch mean.

    clip into [eps, 1 - eps] (zero gradient outside), renormalize by the row sum, NLL of the log.
    """
    p = outputs.float().clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    p = p / p.sum(dim=1, keepdim=True)
    return F.nll_loss(torch.log(p), y)


def output_loss(outputs: torch.Tensor, y: torch.Tensor, kind: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """The loss a network's ``outputs`` kind is trained under: cross-entropy on logits, else Keras' loss."""
    if kind == "logits":
        return F.cross_entropy(outputs.float(), y, label_smoothing=label_smoothing)
    return keras_probability_loss(outputs, y)


def output_kind(model: nn.Module) -> str:
    """What ``model``'s forward returns: "logits" (every zoo network), "probabilities" or "unbounded"."""
    return getattr(model, "outputs", "logits")


def keras_init(model: nn.Module) -> None:
    """Keras' default initializers: Glorot-uniform kernels, zero biases (BN: scale 1, shift 0)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def keras_bn(channels: int, momentum: float = 0.01) -> nn.BatchNorm2d:
    """``keras.layers.BatchNormalization()``: running averages with Keras' momentum 0.99 (PyTorch's
    ``momentum=0.01``: the weight of each new batch), epsilon 1e-3."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=momentum)


class _Head(nn.Module):
    """The study's dense head, ending in ``outputs`` (softmax: probabilities; none: logits)."""

    def __init__(self, layers: list[nn.Module], softmax: bool):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        return torch.softmax(x, dim=1) if self.softmax else x


class AsWrittenVGG(nn.Module):
    """The study's VGG16/VGG19 ``Sequential``, with each bug a switch (its default) for the ablation.

    As written (issue 24): 13/16 ``Conv2D(c, 3, activation='relu', padding='same')`` with
    no batch normalization (``batch_norm=False``), a 2×2 max-pool after each of the five
    blocks, ``Flatten``, ``Dense(4096, relu)`` × 2, ``Dense(10, activation='relu')``
    (``relu_head=True``: a ReLU'd 10-unit layer, whose dead units feed the classifier
    zeros), then ``Dense(10, activation='softmax')`` (``softmax=True``: probabilities,
    under Keras' probability loss). Keras' default initializers. The widths scale with
    ``width_mult`` (4096 too); ``width_mult=1`` is the study's.
    """

    def __init__(self, config: list[int | str], *, num_classes: int = 10, width_mult: float = 1.0,
                 batch_norm: bool = False, relu_head: bool = True, softmax: bool = True, bn_momentum: float = 0.01):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = scale_width(int(item), width_mult)
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            layers += [keras_bn(c_out, bn_momentum)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)  # (B, 512w, 1, 1)
        hidden = scale_width(4096, width_mult)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c_in, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
        if relu_head:
            head += [nn.Linear(hidden, num_classes), nn.ReLU(inplace=True), nn.Linear(num_classes, num_classes)]
        else:
            head += [nn.Linear(hidden, num_classes)]
        self.head = _Head(head, softmax)
        self.outputs = "probabilities" if softmax else "logits"
        keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


class AsWrittenBlock(nn.Module):
    """The study's "residual" block: conv3×3 → BN → ReLU → conv3×3 → BN (the SAME layer) → conv1×1/2 → ReLU.

    As written: ``shortcut = x`` is computed (its projection conv set to ``None``) but never
    added (``add_shortcut=False``); one BN layer serves both convolutions (``shared_bn=True``:
    shared scale/shift and running statistics of two different signals); the block ends in
    a 1×1 convolution with ``stride`` (2 in every block). Fixes: ``add_shortcut`` adds the
    shortcut before the last ReLU (a 1×1 projection with the block's stride where the shape
    changes); ``shared_bn=False`` gives each convolution its own BN.
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int, shared_bn: bool = True, add_shortcut: bool = False,
                 bn_momentum: float = 0.01):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = keras_bn(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = None if shared_bn else keras_bn(c_out, bn_momentum)
        self.conv3 = nn.Conv2d(c_out, c_out, 1, stride=stride)
        self.add_shortcut = add_shortcut
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out or not add_shortcut
                         else nn.Conv2d(c_in, c_out, 1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = torch.relu(self.bn(self.conv1(x)))
        out = self.conv3((self.bn2 or self.bn)(self.conv2(out)))
        return torch.relu(out + shortcut if self.add_shortcut else out)


# The eight blocks' (in, out) channels, as written.
RESNET_BLOCKS = ((64, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512))


class AsWrittenResNet(nn.Module):
    """The study's subclassed "ResNet", with each bug a switch (its default) for the ablation.

    As written (issue 24): stem ``Conv2D(64, 7, strides=2)`` + BN + ReLU +
    ``MaxPool2D(3, strides=2)``; eight :class:`AsWrittenBlock` (channels
    ``RESNET_BLOCKS``), each ending in a stride-2 1×1 conv; global average pooling;
    ``Dense(10)`` without softmax (``softmax=False``: unbounded scores under a loss that
    expects probabilities). ImageNet strides (``imagenet_strides=True``) take the 32×32
    input to 16 (stem), 7 (pool), then 4, 2, 1, 1, ...: the last five blocks run their 3×3
    convolutions on a single pixel. The issue does not give the paddings: "same" is
    assumed everywhere except the pool (Keras' default "valid"); a 3×3 "valid" conv on
    the 1×1 maps would not have run at all.

    Fixes: ``imagenet_strides=False`` (3×3 stride-1 stem, no pool, stride 2 only where the
    channels grow: 32 → 16 → 8 → 4); ``softmax=None`` makes the outputs logits for plain
    cross-entropy; ``softmax=True`` adds a softmax (probabilities under Keras' loss).
    ``bn_momentum`` (both networks): PyTorch's weight of a new batch in BN's running
    averages, Keras' 0.01 by default.
    """

    def __init__(self, *, num_classes: int = 10, width_mult: float = 1.0, imagenet_strides: bool = True,
                 shared_bn: bool = True, add_shortcut: bool = False, softmax: bool | None = False,
                 bn_momentum: float = 0.01):
        super().__init__()
        w = lambda c: scale_width(c, width_mult)  # noqa: E731
        if imagenet_strides:
            self.stem = nn.Sequential(nn.Conv2d(3, w(64), 7, stride=2, padding=3), keras_bn(w(64), bn_momentum),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, w(64), 3, padding=1), keras_bn(w(64), bn_momentum),
                                      nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(
            AsWrittenBlock(w(a), w(b), stride=2 if imagenet_strides or a != b else 1, shared_bn=shared_bn,
                           add_shortcut=add_shortcut, bn_momentum=bn_momentum)
            for a, b in RESNET_BLOCKS))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w(512), num_classes)
        self.softmax = bool(softmax)
        self.outputs = "logits" if softmax is None else "probabilities" if softmax else "unbounded"
        keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, 512w, 1, 1) with ImageNet strides
        x = self.fc(torch.flatten(self.pool(x), 1))  # (B, num_classes)
        return torch.softmax(x, dim=1) if self.softmax else x


class AsWrittenXception(nn.Module):
    """The study's Xception (the one that learned): the paper's ImageNet strides on 32×32, softmax head.

    As written (issue 24): entry flow (stem ``Conv2D(32, 3, strides=2)`` and
    ``Conv2D(64, 3)``, both "valid", + BN + ReLU; blocks of 128, 256, 728 separable
    channels, each pooling with stride 2), middle flow (eight 728-channel blocks), exit
    flow (728 → 1024 with stride 2, separable 1536 and 2048), global average pooling and
    ``Dense(10, activation='softmax')``. On 32×32 the strides give 15, 13, 7, 4, 2 (the
    middle flow at 2×2) and 1×1 in the exit flow. Built from the zoo's
    :class:`~cifarzoo.models.xception.XceptionBlock` (PyTorch's BN defaults there).
    """

    def __init__(self, *, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        w = lambda c: scale_width(c, width_mult)  # noqa: E731
        self.stem = nn.Sequential(
            nn.Conv2d(3, w(32), 3, stride=2, bias=False), keras_bn(w(32)), nn.ReLU(inplace=True),
            nn.Conv2d(w(32), w(64), 3, bias=False), keras_bn(w(64)), nn.ReLU(inplace=True))  # (B, 64w, 13, 13)
        blocks, c = [], w(64)
        # The paper's (and Keras') strides: every entry and exit block halves the map.
        for flow_stride, flow in ((2, ENTRY), (1, MIDDLE), (2, EXIT)):
            for widths, _, relu in flow:
                blocks.append(XceptionBlock(c, tuple(w(x) for x in widths), flow_stride, relu))
                c = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        head: list[nn.Module] = []
        for x in HEAD:
            head += [SeparableConv2d(c, w(x)), keras_bn(w(x)), nn.ReLU(inplace=True)]
            c = w(x)
        self.head = nn.Sequential(*head, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)
        self.outputs = "probabilities"
        keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(self.head(self.blocks(self.stem(x)))), dim=1)


_STUDY = "the original Keras study, as written (issue 24)"


@register_model(paper=_STUDY + ": VGG16 without BN, ReLU'd Dense(10) then softmax", aliases=("as-written-vgg16",),
                as_written=True, recipe=AS_WRITTEN_RECIPE)
def as_written_vgg16(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """The study's VGG16; kwargs (fixes): ``batch_norm``, ``relu_head``, ``softmax``."""
    return AsWrittenVGG(CONFIGS["D"], num_classes=num_classes, width_mult=width_mult, **kwargs)


@register_model(paper=_STUDY + ": VGG19 without BN, ReLU'd Dense(10) then softmax", aliases=("as-written-vgg19",),
                as_written=True, recipe=AS_WRITTEN_RECIPE)
def as_written_vgg19(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """The study's VGG19; kwargs (fixes): ``batch_norm``, ``relu_head``, ``softmax``."""
    return AsWrittenVGG(CONFIGS["E"], num_classes=num_classes, width_mult=width_mult, **kwargs)


@register_model(paper=_STUDY + ": shortcut never added, shared BN, stride-2 1x1 ends, Dense(10) without softmax",
                aliases=("as-written-resnet",), as_written=True, recipe=AS_WRITTEN_RECIPE)
def as_written_resnet(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """The study's ResNet; kwargs (fixes): ``imagenet_strides``, ``shared_bn``, ``add_shortcut``, ``softmax``."""
    return AsWrittenResNet(num_classes=num_classes, width_mult=width_mult, **kwargs)


@register_model(paper=_STUDY + ": Xception with ImageNet strides, softmax head", aliases=("as-written-xception",),
                as_written=True, recipe=AS_WRITTEN_RECIPE)
def as_written_xception(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """The study's Xception."""
    return AsWrittenXception(num_classes=num_classes, width_mult=width_mult, **kwargs)
