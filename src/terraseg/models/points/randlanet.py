"""RandLA-Net (Hu et al., "RandLA-Net: Efficient Semantic Segmentation of Large-Scale Point
Clouds", CVPR 2020) in plain PyTorch: gathers and shared MLPs only, no custom ops.

Faithful to the paper and the official TensorFlow implementation (QingyongHu/RandLA-Net):

- ``fc0``: per-point features (C_in) -> 8, batch norm, leaky ReLU (slope 0.2).
- Encoder: per level a dilated residual block, then random sub-sampling. The block is
  ``mlp1`` (-> d/2) -> two *local feature aggregation* units -> ``mlp2`` (-> 2d, no activation),
  plus a shortcut MLP (-> 2d, no activation), summed and passed through a leaky ReLU. Each unit
  is a *local spatial encoding* (LocSE: an MLP on the relative position encoding
  ``[||p_i - p_k||, p_i - p_k, p_i, p_k]`` of the k neighbours, concatenated with the neighbours'
  features) followed by *attentive pooling* (a bias-free linear layer gives per-channel scores,
  softmax over the k neighbours, weighted sum, MLP). Sub-sampling keeps the level's random
  subset and max-pools each kept point's features over its k neighbours (the official
  ``random_sample``).
- A 1x1 MLP at the bottom, then per level nearest up-sampling, concatenation with the
  encoder's skip features and an MLP back to the skip width.
- Head: MLP 64, MLP 32, dropout 0.5, linear to the classes (logits, no softmax).

Shared MLPs are a linear layer (no bias) + batch norm (eps 1e-6) + ReLU, as the official
``conv2d(..., bn=True)``. Features are channels-last: (B, N, C), and (B, N, K, C) for
neighbourhoods; every batch norm normalises over all leading dimensions.

Two departures, both config fields: the batch norms' momentum is 0.1 by default (the official
TF decay 0.99 is ``bn_momentum=0.01``), and ``input_norm=True`` (off by default) standardises
the inputs of ``fc0`` and of the position-encoding MLPs; see :class:`RandLANetConfig`.

Widths: ``d_out = (16, 64, 128, 256)`` (the SemanticKITTI configuration) gives encoder outputs
of 32, 128, 256 and 512 channels at N, N/4, N/16, N/64 points and a 512-channel bottom at N/256,
as in the paper's Figure 7. The neighbour indices and the sampling hierarchy come from
:func:`terraseg.models.points.randla_data.randla_inputs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.points.bn_fold import batch_norm_affine

LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu default, used by the official implementation
BN_EPS = 1e-6
BN_MOMENTUM = 0.1  # running-statistics update rate (PyTorch's default); see RandLANetConfig.bn_momentum


@dataclass(frozen=True)
class RandLANetConfig:
    """Hyper-parameters of a :class:`RandLANet`.

    Attributes:
        num_classes: output classes C.
        in_channels: per-point input features (3 = x, y, z as in the official SemanticKITTI
            setup; 4 adds intensity).
        d_out: output width ``d`` of each encoder level (the block emits ``2 d`` channels).
        ratios: random sub-sampling ratio after each level (same length as ``d_out``).
        k: neighbours per point.
        fc0_channels: width of the first per-point layer.
        head_channels: widths of the two MLPs of the segmentation head.
        dropout: dropout before the last layer.
        bn_momentum: update rate of the batch-norm running statistics used at inference. The
            official TensorFlow code uses decay 0.99 (momentum 0.01), an average over roughly
            the last 100 steps. On a short run those statistics lag behind the weights: a
            526-step simulator run scored 17.7 % mIoU on 20 validation scans with them and
            30.6 % with statistics re-estimated on its final weights. 0.1 (PyTorch's default)
            averages over roughly the last 10 steps.
        input_norm: standardise each input channel of ``fc0`` (the point features) and of every
            position-encoding MLP (``[||p_i - p_k||, p_i - p_k, p_i, p_k]``) with a parameter-free
            batch norm before the linear layer. Not in the paper. There, absolute coordinates
            (tens of metres) and neighbour offsets (centimetres to a metre) enter the same
            linear layer, so the local shape is a tiny part of its output until the weights on
            the offsets have grown by orders of magnitude, which a short run never reaches.
            Folded into the linear layer at inference (no extra cost).
        preset: name of the preset the config came from (informative).
    """

    num_classes: int
    in_channels: int = 3
    d_out: tuple[int, ...] = (16, 64, 128, 256)
    ratios: tuple[int, ...] = (4, 4, 4, 4)
    k: int = 16
    fc0_channels: int = 8
    head_channels: tuple[int, int] = (64, 32)
    dropout: float = 0.5
    bn_momentum: float = BN_MOMENTUM
    input_norm: bool = False
    preset: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "d_out", tuple(int(d) for d in self.d_out))
        object.__setattr__(self, "ratios", tuple(int(r) for r in self.ratios))
        object.__setattr__(self, "head_channels", tuple(int(c) for c in self.head_channels))
        if self.num_classes < 1 or self.in_channels < 1:
            raise ConfigError(f"RandLA-Net: num_classes and in_channels must be >= 1, got {self.num_classes}, "
                              f"{self.in_channels}")
        if not self.d_out or any(d < 2 or d % 2 for d in self.d_out):
            raise ConfigError(f"RandLA-Net: d_out must be even widths >= 2, got {self.d_out}")
        if len(self.ratios) != len(self.d_out) or any(r < 1 for r in self.ratios):
            raise ConfigError(f"RandLA-Net: need one ratio >= 1 per level, got ratios {self.ratios} for "
                              f"{len(self.d_out)} levels")
        if self.k < 1 or self.fc0_channels < 1 or len(self.head_channels) != 2 or not 0 <= self.dropout < 1:
            raise ConfigError("RandLA-Net: k, fc0_channels must be >= 1, head_channels two widths, 0 <= dropout < 1")
        if not 0 < self.bn_momentum <= 1:
            raise ConfigError(f"RandLA-Net: bn_momentum must be in (0, 1], got {self.bn_momentum}")

    def to_dict(self) -> dict[str, object]:
        """Plain-type dict (for checkpoints); ``RandLANetConfig(**d)`` rebuilds it."""
        return asdict(self)


RANDLA_PRESETS: dict[str, dict[str, object]] = {
    # Official SemanticKITTI configuration (paper, Fig. 7 and the released code).
    "default": {"d_out": (16, 64, 128, 256), "ratios": (4, 4, 4, 4), "k": 16},
    # A quarter of the MACs for CPU demos: half width from level 1 on.
    "small": {"d_out": (8, 32, 64, 128), "ratios": (4, 4, 4, 4), "k": 16},
    # Official S3DIS / Semantic3D configuration: a fifth level of width 512 (1024-channel bottom).
    "large": {"d_out": (16, 64, 128, 256, 512), "ratios": (4, 4, 4, 4, 2), "k": 16},
}


# ---------------------------------------------------------------------- building blocks
class SharedMLP(nn.Module):
    """Linear layer over the last dimension, optional batch norm and activation.

    Input (..., C_in) -> output (..., C_out); batch norm statistics run over all leading dims.
    ``in_norm`` adds a parameter-free batch norm on the *input* (each input channel to zero mean,
    unit variance over the batch; running statistics at inference), for inputs whose channels
    differ in scale by orders of magnitude (see :attr:`RandLANetConfig.input_norm`).
    """

    def __init__(self, c_in: int, c_out: int, bn: bool = True, activation: nn.Module | None = None,
                 in_norm: bool = False) -> None:
        super().__init__()
        self.in_bn = nn.BatchNorm1d(c_in, eps=BN_EPS, momentum=BN_MOMENTUM, affine=False) if in_norm else None
        self.linear = nn.Linear(c_in, c_out, bias=not bn)
        self.bn = nn.BatchNorm1d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM) if bn else None
        self.activation = activation

    def _norms(self) -> list[nn.BatchNorm1d]:
        return [n for n in (self.in_bn, self.bn) if n is not None]

    def fused_weight(self) -> tuple[Tensor, Tensor | None]:
        """(weight (C_out, C_in), bias (C_out,) or None) of the linear layer with the batch norms'
        running statistics folded in (the eval-mode function, one matrix product)."""
        w, b = self.linear.weight, self.linear.bias
        if self.in_bn is not None:  # W ((x - m) r) + b = (W r) x + (b - W (m r))
            ib = self.in_bn
            assert ib.running_var is not None and ib.running_mean is not None
            r = torch.rsqrt(ib.running_var + ib.eps)
            shift_in = -(w @ (ib.running_mean * r))
            w = w * r[None, :]
            b = shift_in if b is None else b + shift_in
        bn = self.bn
        if bn is None:
            return w, b
        scale, shift = batch_norm_affine(bn, b)
        return w * scale[:, None], shift

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        norms = self._norms()
        if norms and (self.training or not all(n.track_running_stats for n in norms)):
            if self.in_bn is not None:
                x2 = self.in_bn(x2)
            y = self.linear(x2)
            if self.bn is not None:
                y = self.bn(y)
        else:  # eval (or no batch norm): batch norms folded into the linear layer, one pass
            w, b = self.fused_weight()
            y = nn.functional.linear(x2, w, b)
        if self.activation is not None:
            y = self.activation(y)
        return y.reshape(*lead, y.shape[-1])


def mlp(c_in: int, c_out: int, in_norm: bool = False) -> SharedMLP:
    """Shared MLP with batch norm and ReLU (the official ``conv2d(..., bn=True)``)."""
    return SharedMLP(c_in, c_out, bn=True, activation=nn.ReLU(inplace=True), in_norm=in_norm)


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """Batched gather: x (B, N, C), idx (B, M) or (B, M, K) int64 -> (B, M, C) or (B, M, K, C)."""
    b, n, c = x.shape
    offset = (torch.arange(b, device=idx.device, dtype=idx.dtype) * n).view(b, *([1] * (idx.dim() - 1)))
    out = x.reshape(b * n, c).index_select(0, (idx + offset).reshape(-1))
    return out.reshape(*idx.shape, c)


def relative_position_encoding(xyz: Tensor, neighbors: Tensor) -> Tensor:
    """(B, N, K, 10) encoding ``[||p_i - p_k||, p_i - p_k, p_i, p_k]`` (official channel order).

    Args:
        xyz: (B, N, 3) coordinates in metres.
        neighbors: (B, N, K) int64 neighbour indices.
    """
    nb = gather(xyz, neighbors)
    center = xyz.unsqueeze(2).expand_as(nb)
    rel = center - nb
    dist = torch.sqrt((rel * rel).sum(dim=-1, keepdim=True))
    return torch.cat([dist, rel, center, nb], dim=-1)


def _weighted_sum(values: Tensor, weights: Tensor, owned: bool) -> Tensor:
    """``(values * weights).sum(dim=2)``; multiplies in place into ``values`` when it is a
    temporary (``owned``) and autograd does not need it."""
    if owned and not (torch.is_grad_enabled() and (values.requires_grad or weights.requires_grad)):
        return values.mul_(weights).sum(dim=2)
    return (values * weights).sum(dim=2)


class AttentivePooling(nn.Module):
    """(B, N, K, d) neighbourhood features -> (B, N, d_out): softmax(W f) over K, weighted sum, MLP."""

    def __init__(self, d: int, d_out: int) -> None:
        super().__init__()
        self.score = nn.Linear(d, d, bias=False)
        self.mlp = mlp(d, d_out)

    def forward(self, f: Tensor) -> Tensor:
        """Reference form on the concatenated (B, N, K, d) neighbourhood features."""
        scores = torch.softmax(self.score(f), dim=2)
        return self.mlp((f * scores).sum(dim=2))

    def pool_neighbors(self, features: Tensor, neighbors: Tensor, f_xyz: Tensor) -> Tensor:
        """Same function as ``forward(cat([gather(features, neighbors), f_xyz], -1))``, cheaper.

        The score layer is linear, so its part acting on the gathered neighbour features is
        applied once per point before the gather (N rows instead of N x K), and the
        concatenation is never built: scores and weighted sums are split by channel.

        Args:
            features: (B, N, h) point features.
            neighbors: (B, N, K) int64 neighbour indices.
            f_xyz: (B, N, K, h2) encoded relative positions (h + h2 = d).
        """
        h = features.shape[-1]
        w = self.score.weight  # (d, d): input columns [neighbour features | f_xyz]
        logits = gather(features @ w[:, :h].t(), neighbors)  # (B, N, K, d)
        d = logits.shape[-1]
        # in-place addmm is outside autocast: under mixed precision the gathered logits are bf16 / fp16
        logits.view(-1, d).addmm_(f_xyz.reshape(-1, f_xyz.shape[-1]).to(logits.dtype), w[:, h:].t().to(logits.dtype))
        scores = torch.softmax(logits, dim=2)
        del logits
        pooled_nb = _weighted_sum(gather(features, neighbors), scores[..., :h], owned=True)
        pooled_xyz = _weighted_sum(f_xyz, scores[..., h:], owned=False)
        return self.mlp(torch.cat([pooled_nb, pooled_xyz], dim=-1))


class LocalFeatureAggregation(nn.Module):
    """Two LocSE + attentive pooling units (the official ``building_block``).

    Input features (B, N, d/2), output (B, N, d).
    """

    def __init__(self, d_out: int, input_norm: bool = False) -> None:
        super().__init__()
        half = d_out // 2
        self.pos1 = mlp(10, half, in_norm=input_norm)
        self.att1 = AttentivePooling(2 * half, half)
        self.pos2 = mlp(half, half)
        self.att2 = AttentivePooling(2 * half, d_out)

    def forward(self, xyz: Tensor, features: Tensor, neighbors: Tensor) -> Tensor:
        f_xyz = self.pos1(relative_position_encoding(xyz, neighbors))
        agg = self.att1.pool_neighbors(features, neighbors, f_xyz)
        f_xyz = self.pos2(f_xyz)
        return self.att2.pool_neighbors(agg, neighbors, f_xyz)


class DilatedResidualBlock(nn.Module):
    """(B, N, d_in) -> (B, N, 2 d_out): MLP, two LFA units, MLP, plus a shortcut, leaky ReLU."""

    def __init__(self, d_in: int, d_out: int, input_norm: bool = False) -> None:
        super().__init__()
        self.mlp1 = mlp(d_in, d_out // 2)
        self.lfa = LocalFeatureAggregation(d_out, input_norm=input_norm)
        self.mlp2 = SharedMLP(d_out, 2 * d_out, bn=True, activation=None)
        self.shortcut = SharedMLP(d_in, 2 * d_out, bn=True, activation=None)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, xyz: Tensor, features: Tensor, neighbors: Tensor) -> Tensor:
        f = self.mlp2(self.lfa(xyz, self.mlp1(features), neighbors))
        return self.act(f + self.shortcut(features))


# ---------------------------------------------------------------------- network
class RandLANet(nn.Module):
    """RandLA-Net for per-point semantic segmentation.

    ``forward(inputs)`` takes the dict of :func:`~terraseg.models.points.randla_data.randla_inputs`
    (unbatched, or batched by :func:`~terraseg.models.points.randla_data.collate_randla`) and
    returns logits (B, N, num_classes) float32 for the level-0 points in input order (B = 1 is
    added for unbatched input and kept in the output).

    Attributes:
        config: the hyper-parameters.
        num_classes, in_channels: from the config.
        class_heads: module name -> extra non-class rows, for checkpoint surgery
            (:mod:`terraseg.models.surgery`): the last linear layer, one row per class.
        spec: keyword arguments that rebuild the model with
            :func:`~terraseg.models.points.build.build_point_model`.
        ontology: the label ontology the model predicts, when known (set by the caller).
    """

    arch = "randlanet"

    def __init__(self, config: RandLANetConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.in_channels = config.in_channels
        self.class_heads: dict[str, int] = {"head.3": 0}
        self.spec: dict[str, object] = {"arch": self.arch, **config.to_dict()}
        self.ontology: object | None = None
        c = config
        self.fc0 = SharedMLP(c.in_channels, c.fc0_channels, bn=True, activation=nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                             in_norm=c.input_norm)
        self.encoder = nn.ModuleList()
        d_in = c.fc0_channels
        skip_channels = [2 * c.d_out[0]]
        for d in c.d_out:
            self.encoder.append(DilatedResidualBlock(d_in, d, input_norm=c.input_norm))
            d_in = 2 * d
            skip_channels.append(d_in)
        self.bottom = mlp(d_in, d_in)
        self.decoder = nn.ModuleList()
        for j in range(len(c.d_out)):
            skip = skip_channels[-j - 2]
            self.decoder.append(mlp(d_in + skip, skip))
            d_in = skip
        self.head = nn.Sequential(mlp(d_in, c.head_channels[0]), mlp(c.head_channels[0], c.head_channels[1]),
                                  nn.Dropout(c.dropout), nn.Linear(c.head_channels[1], c.num_classes))
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.momentum = c.bn_momentum

    def _check(self, inputs: dict[str, object]) -> None:
        levels = len(self.config.d_out)
        for key in ("features", "xyz", "neighbors", "pool", "up"):
            if key not in inputs:
                raise DataError(f"RandLA-Net inputs: missing {key!r} (build them with randla_inputs)")
        xyz = inputs["xyz"]
        if not isinstance(xyz, list | tuple) or len(xyz) < levels:
            raise DataError(f"RandLA-Net inputs: 'xyz' must hold at least {levels} levels")
        for key in ("neighbors", "pool", "up"):
            val = inputs[key]
            if not isinstance(val, list | tuple) or len(val) != levels:
                raise DataError(f"RandLA-Net inputs: {key!r} must hold {levels} levels (one per encoder level), "
                                f"got {len(val) if isinstance(val, list | tuple) else type(val).__name__}")
        feats = inputs["features"]
        assert isinstance(feats, Tensor)
        if feats.shape[-1] != self.config.in_channels:
            raise DataError(f"RandLA-Net inputs: {feats.shape[-1]} feature channels, the model expects "
                            f"{self.config.in_channels}")
        nb = inputs["neighbors"][0]  # type: ignore[index]
        if nb.shape[-1] != self.config.k:
            raise DataError(f"RandLA-Net inputs: {nb.shape[-1]} neighbours per point, the model was configured "
                            f"with k={self.config.k}")

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`forward_features` (the second head MLP, 32 by default)."""
        return int(self.config.head_channels[1])

    def forward(self, inputs: dict[str, object]) -> Tensor:
        """Logits (B, N, num_classes) of the level-0 points (see the class docstring)."""
        return self.classify(self.forward_features(inputs))

    def classify(self, features: Tensor) -> Tensor:
        """The classifier (dropout, linear): features (..., feature_dim) -> logits (..., num_classes)."""
        return self.head[3](self.head[2](features))

    def forward_features(self, inputs: dict[str, object]) -> Tensor:
        """Per-point features (B, N, feature_dim) before the classifier: the network up to the
        head's two MLPs (what :meth:`classify` reads; heads of other models, such as the
        cross-modal ones of :mod:`terraseg.models.fusion`, can read them too)."""
        self._check(inputs)
        feats: Tensor = inputs["features"]  # type: ignore[assignment]
        xyz: list[Tensor] = list(inputs["xyz"])  # type: ignore[call-overload]
        nbs: list[Tensor] = list(inputs["neighbors"])  # type: ignore[call-overload]
        pools: list[Tensor] = list(inputs["pool"])  # type: ignore[call-overload]
        ups: list[Tensor] = list(inputs["up"])  # type: ignore[call-overload]
        if feats.dim() == 2:  # unbatched
            feats = feats[None]
            xyz, nbs, pools, ups = ([t[None] for t in ts] for ts in (xyz, nbs, pools, ups))
        x = self.fc0(feats.float())
        skips: list[Tensor] = []
        for lvl, block in enumerate(self.encoder):
            x = block(xyz[lvl].float(), x, nbs[lvl])
            if lvl == 0:
                skips.append(x)
            x = gather(x, pools[lvl]).amax(dim=2)  # random sub-sampling with neighbourhood max-pool
            skips.append(x)
        x = self.bottom(x)
        for j, dec in enumerate(self.decoder):
            lvl = len(self.encoder) - 1 - j
            x = dec(torch.cat([skips[lvl], gather(x, ups[lvl])], dim=-1))
        return self.head[1](self.head[0](x))
