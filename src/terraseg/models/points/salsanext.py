"""SalsaNext-style range-image segmentation network (Cortinhal et al., "SalsaNext: Fast,
Uncertainty-aware Semantic Segmentation of LiDAR Point Clouds", ISVC 2020), width-configurable.

Layout (``c`` = ``base_channels``, 32 in the paper; H x W input, both multiples of 16 after
padding):

- Context module: ``context_blocks`` residual dilated context blocks (1x1 conv + leaky ReLU as
  the shortcut; 3x3 conv, leaky ReLU, BN; 3x3 dilation-2 conv, leaky ReLU, BN; sum) -> c.
- Encoder: four residual dilated blocks with pooling (c -> 2c -> 4c -> 8c -> 8c, each halving
  H and W by 3x3 average pooling with stride 2) and a fifth without pooling (8c). A block
  concatenates the outputs of a 3x3, a 3x3 dilation-2 and a 2x2 dilation-2 conv (each leaky
  ReLU + BN), fuses them with a 1x1 conv (leaky ReLU + BN) and adds a 1x1-conv shortcut.
  Spatial dropout (``dropout``, 0.2) before pooling in all but the first block.
- Decoder: four up-blocks; each upsamples by pixel shuffle (x2, channels / 4), concatenates the
  encoder's pre-pooling features, and applies the same three-conv fusion (8c -> 4c -> 4c -> 2c
  -> c), with spatial dropout in all but the last.
- A 1x1 conv to the classes. The network returns logits (B, C, H, W); SalsaNext's softmax is
  left to the caller (:func:`torch.softmax` for probabilities, cross-entropy for training).

Input: (B, in_channels, H, W) float32, the normalised range-image channels built by
:func:`terraseg.models.points.range_data.range_input` (range, x, y, z, intensity and optionally
the validity mask). H and W that are not multiples of 16 are zero-padded at the bottom and right
(zero = an empty pixel after normalisation) and the logits cropped back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError

DOWNSAMPLE = 16  # four 2x poolings


@dataclass(frozen=True)
class SalsaNextConfig:
    """Hyper-parameters of a :class:`SalsaNext`.

    Attributes:
        num_classes: output classes C.
        in_channels: input channels: 5 = range, x, y, z, intensity (SalsaNext); 6 adds the
            validity mask; 4 = range, x, y, z (no intensity).
        base_channels: width ``c`` of the first stage (32 in the paper); must be a multiple of 4
            (pixel shuffle).
        context_blocks: number of residual context blocks at full resolution (3 in the paper).
        dropout: spatial dropout rate (0.2 in the paper).
        normalization: name of the input statistics (see
            :data:`terraseg.models.points.range_data.NORMALIZATIONS`), or "custom".
        means, stds: per-channel means and standard deviations of the 5 raw channels (range,
            x, y, z, intensity; metres and sensor units) used to normalise the input.
        width_fold: fold ``f`` of the image width into channels (1 = the paper's network). With
            ``f > 1`` the (B, C, H, W) input is rearranged losslessly to (B, f C, H, W / f)
            (column ``f j + r`` goes to channel block ``r`` of column ``j``), the network runs at
            ``1 / f`` of the width and its (B, f K, H, W / f) output is unfolded back to
            (B, K, H, W): about ``f`` times fewer operations, every pixel still gets its own
            logits. For real-time inference on CPUs (the ``rt`` presets).
        preset: name of the preset the config came from (informative).
    """

    num_classes: int
    in_channels: int = 5
    base_channels: int = 32
    context_blocks: int = 3
    dropout: float = 0.2
    normalization: str = "semantickitti"
    means: tuple[float, ...] = (12.12, 10.88, 0.23, -1.04, 0.21)
    stds: tuple[float, ...] = (12.32, 11.47, 6.91, 0.86, 0.16)
    width_fold: int = 1
    preset: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "means", tuple(float(m) for m in self.means))
        object.__setattr__(self, "stds", tuple(float(s) for s in self.stds))
        if self.num_classes < 1:
            raise ConfigError(f"SalsaNext: num_classes must be >= 1, got {self.num_classes}")
        if self.in_channels not in (4, 5, 6):
            raise ConfigError(f"SalsaNext: in_channels must be 4 (range, xyz), 5 (+ intensity) or 6 (+ mask), "
                              f"got {self.in_channels}")
        if self.base_channels < 4 or self.base_channels % 4:
            raise ConfigError(f"SalsaNext: base_channels must be a positive multiple of 4, got {self.base_channels}")
        if self.context_blocks < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("SalsaNext: need context_blocks >= 1 and 0 <= dropout < 1")
        if self.width_fold not in (1, 2, 4, 8):
            raise ConfigError(f"SalsaNext: width_fold must be 1, 2, 4 or 8, got {self.width_fold}")
        if len(self.means) != 5 or len(self.stds) != 5 or min(self.stds) <= 0:
            raise ConfigError("SalsaNext: means and stds need 5 values (range, x, y, z, intensity), stds > 0")

    def to_dict(self) -> dict[str, object]:
        """Plain-type dict (for checkpoints); ``SalsaNextConfig(**d)`` rebuilds it."""
        return asdict(self)


SALSANEXT_PRESETS: dict[str, dict[str, object]] = {
    # The paper's network (6.7 M parameters).
    "default": {"base_channels": 32, "context_blocks": 3},
    # Half width, one context block: about 1/5 of the MACs.
    "small": {"base_channels": 16, "context_blocks": 1},
    # Quarter width, one context block: about 1/16 of the MACs, for CPU inference.
    "tiny": {"base_channels": 8, "context_blocks": 1},
    # Small width on a 4x width-folded image: real time on 2 CPU cores for 64 x 2048 scans.
    "rt": {"base_channels": 16, "context_blocks": 1, "width_fold": 4},
    # Tiny width, 4x fold: the fastest.
    "rt-tiny": {"base_channels": 8, "context_blocks": 1, "width_fold": 4},
}


def fold_width(x: Tensor, f: int) -> Tensor:
    """(B, C, H, W) -> (B, f C, H, W / f): channel ``r C + c`` of column ``j`` is channel ``c`` of
    column ``f j + r`` (lossless; ``W`` must be a multiple of ``f``)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h, w // f, f).permute(0, 4, 1, 2, 3).reshape(b, f * c, h, w // f)


def unfold_width(y: Tensor, f: int) -> Tensor:
    """Inverse of :func:`fold_width`: (B, f K, H, W / f) -> (B, K, H, W)."""
    b, fk, h, wf = y.shape
    k = fk // f
    return y.reshape(b, f, k, h, wf).permute(0, 2, 3, 4, 1).reshape(b, k, h, wf * f)


def _act() -> nn.Module:
    return nn.LeakyReLU()  # slope 0.01, as SalsaNext


class ResContextBlock(nn.Module):
    """Residual dilated context block: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, dilation=2, padding=2)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = _act()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.act(self.conv1(x))
        a = self.bn1(self.act(self.conv2(shortcut)))
        a = self.bn2(self.act(self.conv3(a)))
        return shortcut + a


class ResBlock(nn.Module):
    """Residual dilated encoder block with optional dropout and 2x average pooling.

    Returns ``(pooled, features)`` when pooling (``features`` is the skip connection), else
    the features: (B, c_in, H, W) -> (B, c_out, H/2, W/2) and (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, dropout: float, pooling: bool = True, drop_out: bool = True) -> None:
        super().__init__()
        self.pooling = pooling
        self.conv1 = nn.Conv2d(c_in, c_out, 1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, dilation=2, padding=2)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv4 = nn.Conv2d(c_out, c_out, 2, dilation=2, padding=1)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.conv5 = nn.Conv2d(3 * c_out, c_out, 1)
        self.bn4 = nn.BatchNorm2d(c_out)
        self.act = _act()
        self.dropout = nn.Dropout2d(dropout) if drop_out else nn.Identity()
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if pooling else None

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        shortcut = self.act(self.conv1(x))
        a1 = self.bn1(self.act(self.conv2(x)))
        a2 = self.bn2(self.act(self.conv3(a1)))
        a3 = self.bn3(self.act(self.conv4(a2)))
        a = shortcut + self.bn4(self.act(self.conv5(torch.cat([a1, a2, a3], dim=1))))
        b = self.dropout(a)
        if self.pool is None:
            return b
        return self.pool(b), a


class UpBlock(nn.Module):
    """Pixel-shuffle up-sampling, skip concatenation, three-conv fusion.

    ``forward(x (B, c_in, h, w), skip (B, 2 c_out, 2h, 2w)) -> (B, c_out, 2h, 2w)``.
    """

    def __init__(self, c_in: int, c_out: int, dropout: float, drop_out: bool = True) -> None:
        super().__init__()
        self.shuffle = nn.PixelShuffle(2)
        self.drop1, self.drop2, self.drop3 = ((nn.Dropout2d(dropout) if drop_out else nn.Identity()) for _ in range(3))
        self.conv1 = nn.Conv2d(c_in // 4 + 2 * c_out, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, dilation=2, padding=2)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 2, dilation=2, padding=1)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.conv4 = nn.Conv2d(3 * c_out, c_out, 1)
        self.bn4 = nn.BatchNorm2d(c_out)
        self.act = _act()

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.drop1(self.shuffle(x))
        u = self.drop2(torch.cat([up, skip], dim=1))
        e1 = self.bn1(self.act(self.conv1(u)))
        e2 = self.bn2(self.act(self.conv2(e1)))
        e3 = self.bn3(self.act(self.conv3(e2)))
        e = self.bn4(self.act(self.conv4(torch.cat([e1, e2, e3], dim=1))))
        return self.drop3(e)


class SalsaNext(nn.Module):
    """SalsaNext range-image segmentation network: (B, in_channels, H, W) -> logits (B, C, H, W).

    Attributes:
        config: the hyper-parameters (including the input normalisation).
        num_classes, in_channels: from the config.
        class_heads: module name -> extra non-class rows, for checkpoint surgery
            (:mod:`terraseg.models.surgery`): the final 1x1 convolution.
        spec: keyword arguments that rebuild the model with
            :func:`~terraseg.models.points.build.build_point_model`.
        ontology: the label ontology the model predicts, when known (set by the caller).
    """

    arch = "salsanext"

    def __init__(self, config: SalsaNextConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.in_channels = config.in_channels
        f = config.width_fold
        # with a width fold the head's rows are (class, sub-column) pairs: no class-row surgery
        self.class_heads: dict[str, int] = {"logits": 0} if f == 1 else {}
        self.spec: dict[str, object] = {"arch": self.arch, **config.to_dict()}
        self.ontology: object | None = None
        c, p = config.base_channels, config.dropout
        self.context = nn.Sequential(ResContextBlock(config.in_channels * f, c),
                                     *(ResContextBlock(c, c) for _ in range(config.context_blocks - 1)))
        self.res1 = ResBlock(c, 2 * c, p, pooling=True, drop_out=False)
        self.res2 = ResBlock(2 * c, 4 * c, p)
        self.res3 = ResBlock(4 * c, 8 * c, p)
        self.res4 = ResBlock(8 * c, 8 * c, p)
        self.res5 = ResBlock(8 * c, 8 * c, p, pooling=False)
        self.up1 = UpBlock(8 * c, 4 * c, p)
        self.up2 = UpBlock(4 * c, 4 * c, p)
        self.up3 = UpBlock(4 * c, 2 * c, p)
        self.up4 = UpBlock(2 * c, c, p, drop_out=False)
        self.logits = nn.Conv2d(c, config.num_classes * f, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise DataError(f"SalsaNext: expected input (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        f = self.config.width_fold
        ph, pw = (-h) % DOWNSAMPLE, (-w) % (DOWNSAMPLE * f)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        if f > 1:
            x = fold_width(x, f)
        ctx = self.context(x)
        d0, s0 = self.res1(ctx)
        d1, s1 = self.res2(d0)
        d2, s2 = self.res3(d1)
        d3, s3 = self.res4(d2)
        bottom = self.res5(d3)
        u = self.up1(bottom, s3)
        u = self.up2(u, s2)
        u = self.up3(u, s1)
        u = self.up4(u, s0)
        out = self.logits(u)
        if f > 1:
            out = unfold_width(out, f)
        return out[..., :h, :w] if (ph or pw) else out
