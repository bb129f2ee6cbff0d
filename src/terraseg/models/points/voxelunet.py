"""Sparse voxel U-Net (MinkUNet / SpUNet / SparseConvNet U-Net family) in pure PyTorch.

The network of the MinkowskiEngine / torchsparse / SPVNAS "MinkUNet", Pointcept's SpUNet and
xMUDA's SparseConvNet U-Net, built on :mod:`terraseg.models.points.sparse_conv` (no compiled
extension; the optional ``spconv`` backend runs the same weights on CUDA).

Input: the voxels of a batch of scans from :func:`~terraseg.models.points.voxelize.voxelize` /
:func:`~terraseg.models.points.voxelize.collate_voxels` (a dict with ``coords`` (M, 4)
``[b, x, y, z]``, ``feats`` (M, F) and ``inverse`` (N,) point -> voxel). With
``input_norm`` the voxel features (x, y, z in metres, intensity, offsets in voxel units) are
first standardised per channel by a parameter-free batch norm, so tens of metres do not swamp
intensity and the centimetre offsets.

Two block styles (``style``):

``residual`` (MinkUNet, SPVNAS / MinkowskiEngine layout; ``channels`` has ``2 L + 1`` widths
``cs`` and ``layers`` ``2 L`` block counts for ``L`` down-samplings)::

    stem      subm conv (F -> cs0, kernel stem_kernel), BN, ReLU, subm conv 3 (cs0 -> cs0), BN, ReLU
    down i    strided conv 2 (cs[i-1] -> cs[i-1]), BN, ReLU, then layers[i-1] residual blocks -> cs[i]
    up j      transposed conv 2 (-> cs[L+j]), BN, ReLU, concatenate the encoder features of that
              level, layers[L+j-1] residual blocks -> cs[L+j]
    residual  block: subm conv 3, BN, ReLU, subm conv 3, BN, plus the input (a 1x1 linear + BN
              when the width changes), ReLU

``scn`` (SparseConvNet's ``scn.UNet`` as xMUDA's ``UNetSCN`` uses it; ``channels`` are the
``L + 1`` level widths ``n_planes``, ``layers`` the blocks per level on each side)::

    stem      subm conv 3 (F -> n_planes[0]), no norm
    level i   layers[i] plain blocks (BN, ReLU, subm conv 3); then, below the last level,
              BN, ReLU, strided conv 2 (-> n_planes[i+1]), level i+1, BN, ReLU, transposed conv 2
              (-> n_planes[i]), concatenate with the level's input, layers[i] plain blocks
    end       BN, ReLU

Output: a linear classifier on each voxel's features (``feature_dim`` channels), read by every
point through ``inverse``: :meth:`VoxelUNet.forward` returns per-point logits (N, C) and
:meth:`VoxelUNet.forward_features` the per-point features (N, F) that other heads (cross-modal
learning, label-efficient learning) can build on.

In eval mode each conv + batch norm pair of the residual style is folded into one convolution
with a bias (same function, one pass fewer over the features).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.points.bn_fold import batch_norm_affine
from terraseg.models.points.sparse_conv import (
    Method,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    resolve_backend,
)
from terraseg.models.points.voxelize import DEFAULT_VOXEL_SIZE, voxel_feature_channels

BN_MOMENTUM = 0.1
BN_EPS = 1e-5

MINKUNET_CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)
"""``cs`` of SPVNAS's MinkUNet (cr = 1) and the MinkUNet18/34 presets."""

VOXEL_PRESETS: dict[str, dict[str, object]] = {
    # SPVNAS / torchsparse MinkUNet (cr 1.0): two residual blocks per stage
    "default": {"style": "residual", "channels": MINKUNET_CHANNELS, "layers": (2,) * 8},
    "minkunet18": {"style": "residual", "channels": MINKUNET_CHANNELS, "layers": (2,) * 8},
    # MinkowskiEngine MinkUNet34 block counts (2, 3, 4, 6 down; 2, 2, 2, 2 up)
    "minkunet34": {"style": "residual", "channels": MINKUNET_CHANNELS, "layers": (2, 3, 4, 6, 2, 2, 2, 2)},
    # real-time CPU preset: half width (SPVNAS cr 0.5), one block per stage
    "small": {"style": "residual", "channels": (16, 16, 32, 64, 128, 128, 64, 48, 48), "layers": (1,) * 8},
    # xMUDA's UNetSCN: m = 16, 7 levels of widths m, 2m, ..., 7m, one plain block per level
    "scn": {"style": "scn", "channels": (16, 32, 48, 64, 80, 96, 112), "layers": (1,) * 7},
}


@dataclass(frozen=True)
class VoxelUNetConfig:
    """Hyper-parameters of a :class:`VoxelUNet`.

    Attributes:
        num_classes: output classes C.
        in_channels: point columns averaged into each voxel's features (3 = x, y, z; 4 adds
            intensity); the network input has ``in_channels + 3`` channels with ``centre_offsets``.
        voxel_size: voxel edge in metres (5 cm in MinkUNet / SPVNAS / xMUDA outdoors).
        centre_offsets: add the mean offset of the points from the voxel centre (voxel units)
            to the voxel features.
        input_norm: standardise each input channel with a parameter-free batch norm (running
            statistics at inference); absolute coordinates in metres otherwise dominate the
            first convolution.
        style: ``residual`` (MinkUNet) or ``scn`` (SparseConvNet U-Net), see the module docstring.
        channels: widths (``2 L + 1`` for residual, ``L + 1`` for scn).
        layers: blocks per stage (``2 L`` for residual, ``L + 1`` for scn).
        stem_kernel: kernel of the first convolution (3; MinkowskiEngine's MinkUNet uses 5).
        dropout: dropout before the classifier.
        bn_momentum: batch-norm running-statistics update rate.
        preset: name of the preset the config came from (informative).
    """

    num_classes: int
    in_channels: int = 4
    voxel_size: float = DEFAULT_VOXEL_SIZE
    centre_offsets: bool = True
    input_norm: bool = True
    style: Literal["residual", "scn"] = "residual"
    channels: tuple[int, ...] = MINKUNET_CHANNELS
    layers: tuple[int, ...] = (2,) * 8
    stem_kernel: int = 3
    dropout: float = 0.0
    bn_momentum: float = BN_MOMENTUM
    preset: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "voxel_size", float(self.voxel_size))
        name = "voxel U-Net"
        if self.num_classes < 1:
            raise ConfigError(f"{name}: num_classes must be >= 1, got {self.num_classes}")
        if self.in_channels < 3:
            raise ConfigError(f"{name}: in_channels must be >= 3 (x, y, z first), got {self.in_channels}")
        if not self.voxel_size > 0:
            raise ConfigError(f"{name}: voxel_size must be positive (metres), got {self.voxel_size}")
        if self.style not in ("residual", "scn"):
            raise ConfigError(f"{name}: style must be residual or scn, got {self.style!r}")
        if any(c < 1 for c in self.channels) or any(n < 0 for n in self.layers):
            raise ConfigError(f"{name}: channels must be >= 1 and layers >= 0")
        c, n = len(self.channels), len(self.layers)
        if self.style == "residual" and (c < 3 or c % 2 == 0 or n != c - 1):
            raise ConfigError(f"{name}: the residual style needs 2 L + 1 channels and 2 L layers (L down-samplings), "
                              f"got {c} channels and {n} layers")
        if self.style == "scn" and (c < 2 or n != c):
            raise ConfigError(f"{name}: the scn style needs one width and one block count per level, got {c} "
                              f"channels and {n} layers")
        if self.stem_kernel % 2 == 0 or self.stem_kernel < 1:
            raise ConfigError(f"{name}: stem_kernel must be odd, got {self.stem_kernel}")
        if not 0 <= self.dropout < 1 or not 0 < self.bn_momentum <= 1:
            raise ConfigError(f"{name}: need 0 <= dropout < 1 and 0 < bn_momentum <= 1")

    @property
    def levels(self) -> int:
        """Number of down-samplings L."""
        return (len(self.channels) - 1) // 2 if self.style == "residual" else len(self.channels) - 1

    @property
    def feature_dim(self) -> int:
        """Width of the per-point features before the classifier."""
        return self.channels[-1] if self.style == "residual" else self.channels[0]

    @property
    def input_channels(self) -> int:
        """Width of the voxel features the network takes."""
        return voxel_feature_channels(self.in_channels, self.centre_offsets)

    def to_dict(self) -> dict[str, object]:
        """Plain-type dict (for checkpoints); ``VoxelUNetConfig(**d)`` rebuilds it."""
        return asdict(self)


# ----------------------------------------------------------------------------- building blocks
def _bn(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def _fold(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``bn(conv(x))`` in eval mode as one convolution (output channels last)."""
    scale, shift = batch_norm_affine(bn, bias)
    return weight * scale, shift


class ConvBN(nn.Module):
    """Sparse convolution, batch norm, optional ReLU (folded into one convolution in eval mode)."""

    def __init__(self, conv: SubmanifoldConv3d | StridedConv3d | TransposedConv3d, relu: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.bn = _bn(conv.out_channels)
        self.relu = relu

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.training or not self.bn.track_running_stats:
            y = self.conv(x)
            f = self.bn(y.feats)
        else:  # batch norm folded into the convolution (its output is a fresh tensor)
            w, b = _fold(self.conv.weight, self.conv.bias, self.bn)
            y = self.conv.apply_weight(x, w, b)
            f = y.feats
        if self.relu:
            f = torch.relu_(f)
        return y.replace(f)


class LinearBN(nn.Module):
    """Per-voxel linear layer (a 1x1x1 convolution) and batch norm: the residual shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = _bn(c_out)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not self.bn.track_running_stats:
            return self.bn(self.linear(x))
        w, b = _fold(self.linear.weight.t(), None, self.bn)
        return torch.addmm(b, x, w)


class ResidualBlock(nn.Module):
    """MinkUNet basic block: subm conv 3, BN, ReLU, subm conv 3, BN, + shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(SubmanifoldConv3d(c_in, c_out, 3))
        self.conv2 = ConvBN(SubmanifoldConv3d(c_out, c_out, 3), relu=False)
        self.shortcut = LinearBN(c_in, c_out) if c_in != c_out else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.conv2(self.conv1(x))
        short = x.feats if self.shortcut is None else self.shortcut(x.feats)
        # y.feats is a fresh tensor that no backward pass needs (batch norm keeps its input and
        # statistics, not its output): add and ReLU in place, no new (M, C) buffers
        return y.replace(torch.relu_(y.feats.add_(short)))


class PreActConv(nn.Module):
    """SparseConvNet's pre-activation unit: BN, ReLU, then a sparse convolution."""

    def __init__(self, conv: SubmanifoldConv3d | StridedConv3d | TransposedConv3d, c_in: int) -> None:
        super().__init__()
        self.bn = _bn(c_in)
        self.conv = conv

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.conv(x.replace(torch.relu(self.bn(x.feats))))


class SCNLevel(nn.Module):
    """One level of SparseConvNet's U-Net (recursive: holds the levels below it)."""

    def __init__(self, planes: tuple[int, ...], reps: tuple[int, ...]) -> None:
        super().__init__()
        c = planes[0]
        self.pre = nn.ModuleList(PreActConv(SubmanifoldConv3d(c, c, 3), c) for _ in range(reps[0]))
        self.inner: SCNLevel | None = None
        if len(planes) > 1:
            self.down = PreActConv(StridedConv3d(c, planes[1], 2), c)
            self.inner = SCNLevel(planes[1:], reps[1:])
            self.up = PreActConv(TransposedConv3d(planes[1], c, 2), planes[1])
            self.post = nn.ModuleList(PreActConv(SubmanifoldConv3d(2 * c if i == 0 else c, c, 3), 2 * c if i == 0 else c)
                                      for i in range(reps[0]))

    def forward(self, x: SparseTensor) -> SparseTensor:
        for m in self.pre:
            x = m(x)
        if self.inner is None:
            return x
        y = self.up(self.inner(self.down(x)))
        x = x.replace(torch.cat([x.feats, y.feats], dim=1))
        for m in self.post:
            x = m(x)
        return x


# ------------------------------------------------------------------------------------ network
class VoxelUNet(nn.Module):
    """Sparse voxel U-Net for per-point semantic segmentation (see the module docstring).

    Attributes:
        config: the hyper-parameters.
        num_classes, in_channels, feature_dim: from the config.
        backend: ``auto`` (spconv on CUDA when installed, else pure PyTorch), ``torch`` or
            ``spconv``; a run-time choice, not stored in checkpoints.
        conv_method: ``mm`` (per-offset gather / matmul / scatter-add) or ``gemm`` (one gathered
            matrix product per block of voxels) for the pure PyTorch backend.
        class_heads: module name -> extra non-class rows, for checkpoint surgery (the classifier).
        spec: keyword arguments that rebuild the model with
            :func:`~terraseg.models.points.build.build_point_model`.
        ontology: the label ontology the model predicts, when known (set by the caller).
    """

    arch = "voxelunet"

    def __init__(self, config: VoxelUNetConfig, backend: str = "auto", conv_method: Method = "mm") -> None:
        super().__init__()
        resolve_backend(backend, torch.device("cpu"))  # validates the name
        self.config = config
        self.num_classes = config.num_classes
        self.in_channels = config.in_channels
        self.feature_dim = config.feature_dim
        self.backend = backend
        self.conv_method: Method = conv_method
        self.class_heads: dict[str, int] = {"head": 0}
        self.spec: dict[str, object] = {"arch": self.arch, **config.to_dict()}
        self.ontology: object | None = None
        c = config
        f_in = c.input_channels
        self.input_norm = nn.BatchNorm1d(f_in, eps=BN_EPS, momentum=BN_MOMENTUM, affine=False) if c.input_norm else None
        if c.style == "residual":
            cs, lay, nl = c.channels, c.layers, c.levels
            self.stem = nn.Sequential(ConvBN(SubmanifoldConv3d(f_in, cs[0], c.stem_kernel)),
                                      ConvBN(SubmanifoldConv3d(cs[0], cs[0], 3)))
            self.down = nn.ModuleList()
            self.encoder = nn.ModuleList()
            for i in range(1, nl + 1):
                self.down.append(ConvBN(StridedConv3d(cs[i - 1], cs[i - 1], 2)))
                self.encoder.append(self._blocks(cs[i - 1], cs[i], lay[i - 1]))
            self.up = nn.ModuleList()
            self.decoder = nn.ModuleList()
            for j in range(1, nl + 1):
                c_up, skip = cs[nl + j], cs[nl - j]
                self.up.append(ConvBN(TransposedConv3d(cs[nl + j - 1], c_up, 2)))
                self.decoder.append(self._blocks(c_up + skip, c_up, lay[nl + j - 1]))
        else:
            self.stem_conv = SubmanifoldConv3d(f_in, c.channels[0], c.stem_kernel)
            self.unet = SCNLevel(c.channels, c.layers)
            self.out_bn = _bn(c.channels[0])
        self.dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.head = nn.Linear(c.feature_dim, c.num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.momentum = c.bn_momentum

    @staticmethod
    def _blocks(c_in: int, c_out: int, n: int) -> nn.Sequential:
        if n == 0:
            return nn.Sequential(ConvBN(SubmanifoldConv3d(c_in, c_out, 3))) if c_in != c_out else nn.Sequential()
        return nn.Sequential(*(ResidualBlock(c_in if i == 0 else c_out, c_out) for i in range(n)))

    # ---------------------------------------------------------------------------- inputs
    def sparse_input(self, batch: dict[str, Any]) -> SparseTensor:
        """The base level (stride 1) of a voxel batch: its voxels sorted by key (the context's
        ``sorted_order`` says how, when they were not)."""
        for key in ("coords", "feats"):
            if key not in batch:
                raise DataError(f"voxel U-Net inputs: missing {key!r} (build them with voxelize / collate_voxels)")
        feats: Tensor = batch["feats"]
        coords: Tensor = batch["coords"]
        if coords.dim() == 2 and coords.shape[1] == 3:  # one scan, unbatched
            coords = torch.cat([coords.new_zeros(len(coords), 1), coords], dim=1)
        want = self.config.input_channels
        if feats.dim() != 2 or feats.shape[1] != want:
            raise DataError(f"voxel U-Net inputs: voxel features of shape {tuple(feats.shape)}, the model expects "
                            f"(M, {want}) (in_channels {self.config.in_channels}"
                            f"{' + 3 centre offsets' if self.config.centre_offsets else ''})")
        backend = resolve_backend(self.backend, feats.device)
        bs = batch.get("batch_size")
        return SparseTensor.from_voxels(feats.float(), coords.to(feats.device), bs if isinstance(bs, int) else None,
                                        backend, self.conv_method, source="voxel U-Net inputs")

    # ---------------------------------------------------------------------------- network
    def voxel_features(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """(features (M, feature_dim) of the batch's voxels in their given order, the batch's
        point -> voxel index ``inverse`` or None)."""
        x = self.sparse_input(batch)
        order = x.context.sorted_order
        if self.input_norm is not None:
            x = x.replace(self.input_norm(x.feats))
        c = self.config
        if c.style == "residual":
            x = self.stem(x)
            skips = [x]
            for down, enc in zip(self.down, self.encoder):
                x = enc(down(x))
                skips.append(x)
            for j, (up, dec) in enumerate(zip(self.up, self.decoder)):
                y = up(x)
                skip = skips[-j - 2]
                x = dec(y.replace(torch.cat([y.feats, skip.feats], dim=1)))
            f = x.feats
        else:
            x = self.unet(self.stem_conv(x))
            f = torch.relu(self.out_bn(x.feats))
        if order is not None:  # back to the order the voxels came in
            f = torch.empty_like(f).index_copy_(0, order, f)
        return f, batch.get("inverse")

    def forward_features(self, batch: dict[str, Any]) -> Tensor:
        """Per-point features (N, feature_dim) before the classifier (per voxel, in the batch's
        voxel order, when the batch has no ``inverse``)."""
        f, inverse = self.voxel_features(batch)
        return f if inverse is None else f.index_select(0, inverse)

    def classify(self, features: Tensor) -> Tensor:
        """Logits (..., num_classes) of features (..., feature_dim) (dropout in training)."""
        return self.head(self.dropout(features))

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Per-point logits (N, num_classes) float32 (per voxel, in the batch's voxel order, when the
        batch has no ``inverse``)."""
        f, inverse = self.voxel_features(batch)
        logits = self.classify(f)
        return logits if inverse is None else logits.index_select(0, inverse)
