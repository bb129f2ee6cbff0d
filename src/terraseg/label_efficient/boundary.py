"""Boundary head, its loss, and the boundary-aware energy loss (WS3D / WS3D++).

Tensors put points on the rows and channels last: per-point features ``(P, C)`` or ``(B, N, C)``,
logits ``(P, K)`` or ``(B, N, K)``, boundary targets / weights ``(P,)`` or ``(B, N)``. Boundary
targets come from region borders: :func:`terraseg.geometry.regions.region_boundaries` on an
over-segmentation (no labels needed).

Boundary-aware energy loss, our reading of the reference
---------------------------------------------------------
The reference (WS3D++, and WS3D before it) describes the loss only in words: "an energy-based
loss function, guided by boundary labels, encourages confident semantic predictions at
boundaries", with boundary labels predicted by a boundary network; it gives no formula. We read
"energy" as the free energy of a classifier's logits used for energy-based out-of-distribution
training (Liu et al., NeurIPS 2020),

    E(x) = -T * logsumexp(z(x) / T),

which is low when one class dominates (confident) and high when the logits are flat, and the
loss as that paper's squared hinge on the in-distribution side, applied to boundary points:

    L = sum_i w_i * max(0, E(x_i) - m)^2 / sum_i w_i,

with ``w_i`` the point's boundary weight (1 / 0 targets, or the boundary head's probability,
detached) and ``m`` the energy margin. Points whose energy is already below ``m`` add nothing.
The margin depends on the logits' scale: with K classes, flat logits give ``E = -T log K``
(-3.0 for 20 classes) and a point whose top logit exceeds the rest by ``d`` has
``E ~ -(top logit)``; the default ``m = -5`` asks boundary points to be about as confident as a
top logit 5 above zero. Read the energies of labelled points after supervised training
(:func:`free_energy`) to set it for another network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError

DEFAULT_ENERGY_MARGIN = -5.0
DEFAULT_ENERGY_TEMPERATURE = 1.0


def _rows(t: Tensor, what: str, channels: bool) -> Tensor:
    """Flatten ``(B, N[, C])`` to ``(B*N[, C])``; ``(P[, C])`` is returned as is."""
    want = 2 if channels else 1
    if t.dim() == want:
        return t
    if t.dim() == want + 1:
        return t.reshape(-1, t.shape[-1]) if channels else t.reshape(-1)
    shape = "(P, C) or (B, N, C)" if channels else "(P,) or (B, N)"
    raise DataError(f"{what}: expected {shape}, got shape {tuple(t.shape)}")


class BoundaryHead(nn.Module):
    """Per-point boundary logits from per-point features: ``Linear -> LayerNorm -> ReLU -> Linear(1)``.

    ``forward(features)`` takes ``(P, C)`` or ``(B, N, C)`` features (the backbone's penultimate
    features, e.g. ``forward_features`` of the voxel U-Net or the input of RandLA-Net's last
    layer) and returns ``(P,)`` or ``(B, N)`` logits; ``sigmoid`` gives the boundary probability.
    """

    def __init__(self, in_channels: int, hidden: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1:
            raise ConfigError(f"BoundaryHead needs positive channel counts, got in_channels={in_channels}, "
                              f"hidden={hidden}")
        self.in_channels = int(in_channels)
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.in_channels:
            raise DataError(f"BoundaryHead expects {self.in_channels} feature channels, got {features.shape[-1]}")
        return self.net(features).squeeze(-1)


def boundary_loss(logits: Tensor, targets: Tensor, pos_weight: float | str | None = "balanced",
                  valid: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of boundary logits against 0/1 boundary targets (mean over points).

    Args:
        logits: ``(P,)`` or ``(B, N)`` boundary logits (:class:`BoundaryHead`).
        targets: same shape, bool or 0/1 (e.g. :func:`~terraseg.geometry.regions.region_boundaries`).
        pos_weight: weight of boundary points: a number, ``"balanced"`` (non-boundary / boundary
            count of this batch, so both sides weigh the same; boundaries are typically 5-20 % of
            the points) or None (1).
        valid: optional bool mask of the points to use.
    """
    z = _rows(logits, "boundary logits", False).float()
    y = _rows(targets, "boundary targets", False).to(z.dtype)
    if y.shape != z.shape:
        raise DataError(f"boundary targets have {y.shape[0]} points, the logits {z.shape[0]}")
    if valid is not None:
        v = _rows(valid, "valid mask", False).bool()
        z, y = z[v], y[v]
    if not z.numel():
        return logits.sum() * 0.0
    if pos_weight == "balanced":
        pos = y.sum()
        pw = ((y.numel() - pos) / pos.clamp(min=1.0)).detach()
    elif pos_weight is None:
        pw = torch.ones((), dtype=z.dtype, device=z.device)
    elif isinstance(pos_weight, int | float) and pos_weight > 0:
        pw = torch.tensor(float(pos_weight), dtype=z.dtype, device=z.device)
    else:
        raise ConfigError(f"pos_weight must be a positive number, 'balanced' or None, got {pos_weight!r}")
    return F.binary_cross_entropy_with_logits(z, y, pos_weight=pw)


def free_energy(logits: Tensor, temperature: float = DEFAULT_ENERGY_TEMPERATURE) -> Tensor:
    """Free energy ``-T * logsumexp(z / T)`` over the last (class) dimension (lower = more confident)."""
    if not temperature > 0:
        raise ConfigError(f"energy temperature must be > 0, got {temperature}")
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def boundary_energy_loss(logits: Tensor, boundary: Tensor, margin: float = DEFAULT_ENERGY_MARGIN,
                         temperature: float = DEFAULT_ENERGY_TEMPERATURE) -> Tensor:
    """Boundary-weighted squared hinge on the free energy (see the module docstring for the reading).

    Args:
        logits: ``(P, K)`` or ``(B, N, K)`` class logits of every point (labelled or not).
        boundary: ``(P,)`` or ``(B, N)`` boundary weights: bool / 0-1 targets from region borders,
            or probabilities from the boundary head (detached here: this loss trains the
            segmentation logits, not the boundary head).
        margin: energy margin ``m``; boundary points with ``E > m`` are penalised by ``(E - m)^2``.
        temperature: energy temperature ``T``.

    Returns:
        A scalar: ``sum w (E - m)_+^2 / sum w`` (0, attached to the graph, when no weight is
        positive).
    """
    z = _rows(logits, "logits", True)
    w = _rows(boundary, "boundary weights", False).detach().float()
    if w.shape[0] != z.shape[0]:
        raise DataError(f"boundary weights have {w.shape[0]} points, the logits {z.shape[0]}")
    if (w < 0).any():
        raise DataError("boundary weights must be >= 0")
    e = free_energy(z, temperature)
    total = w.sum()
    if total <= 0:
        return z.sum() * 0.0
    return (w * F.relu(e - margin).pow(2)).sum() / total
