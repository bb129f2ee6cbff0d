"""Sparse 3D convolution on voxel grids in pure PyTorch (CPU and CUDA, no compiled extension).

A :class:`SparseTensor` holds the features of the occupied voxels of a batch of scans,
``feats`` (M, C), and their integer coordinates ``coords`` (M, 4) ``[b, x, y, z]`` in units of
its level's voxels (``stride`` base voxels). Three convolutions act on it:

- :class:`SubmanifoldConv3d` (odd kernel ``k``, stride 1): outputs exactly at the input voxels,
  ``out[p] = sum_d W[d]^T in[p + d]`` over the offsets ``d`` in ``{-k//2 .. k//2}^3`` whose voxel
  ``p + d`` is occupied, i.e. a dense ``conv3d`` (padding ``k//2``, a cross-correlation) evaluated
  at the active sites with zeros elsewhere. Sparsity never dilates (Graham et al. 2018).
- :class:`StridedConv3d` (kernel = stride ``s``, the MinkUNet / SparseConvNet down-sampling):
  one output per occupied coarse voxel ``q = floor(p / s)``, ``out[q] = sum_p W[p - s q]^T in[p]``
  over its occupied children: a dense ``conv3d(kernel=s, stride=s)`` at the active coarse sites.
- :class:`TransposedConv3d` (kernel = stride ``s``): back to the finer level the down-sampling
  came from, ``out[p] = W[p - s q]^T in[q]`` with ``q = floor(p / s)``: a dense
  ``conv_transpose3d(kernel=s, stride=s)`` read at the occupied fine voxels.

Weights are ``(K, C_in, C_out)``, ``K = k^3`` offsets in lexicographic order of
``(dx, dy, dz)`` (``dx`` slowest), the layout of MinkowskiEngine and torchsparse.

How it runs. Voxels are identified by int64 keys (:func:`pack_keys`: batch index in the top
bits, then x, y, z with 18 bits each) and kept sorted by key at every level. A convolution's
*kernel map* lists, per offset, the (input voxel, output voxel) pairs; it is found with
``torch.searchsorted`` on the sorted keys (a submanifold map needs only half the offsets: the
pairs of ``-d`` are those of ``d`` reversed) and with one ``torch.unique`` per down-sampling. The
map of a level is computed once per forward pass and reused by every convolution at that level
(it is cached on the tensors' shared :class:`SparseContext`). A convolution is then, per offset, a
row gather (``index_select``), a matrix product and a scatter-add (``index_add_``), inside one
:class:`torch.autograd.Function` that keeps only its input and weights for the backward pass
(autograd would otherwise keep every gathered block).

The optional ``spconv`` backend (traveller59/spconv, ``pip install spconv`` or a CUDA build
such as ``spconv-cu120``) runs the same layers with the same weights: :class:`SparseContext`
with ``backend="spconv"`` hands each convolution to spconv's kernels, converting the weights to
its ``(C_out, k, k, k, C_in)`` layout on the fly, so one checkpoint runs on either. spconv's CPU
build runs forward only (its backward raises), so ``auto`` picks it only on CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.points.voxelize import COORD_BITS, KEY_PAD, MAX_EXTENT

Backend = Literal["auto", "torch", "spconv"]
BATCH_BITS = 63 - 3 * COORD_BITS
MAX_BATCH = 1 << BATCH_BITS
_FIELD = (1 << COORD_BITS) - 1


# ---------------------------------------------------------------------------------------- keys
def pack_keys(coords: Tensor) -> Tensor:
    """(M,) int64 keys of (M, 4) ``[b, x, y, z]`` non-negative voxel coordinates.

    ``key = b << 54 | (x + 8) << 36 | (y + 8) << 18 | (z + 8)``: sorting keys sorts voxels by
    (b, x, y, z), and a neighbour at offset ``d`` (``|d_i| <= 8``) has key ``key + delta(d)``.
    """
    c = coords.to(torch.int64)
    return (c[:, 0] << (3 * COORD_BITS)) | ((c[:, 1] + KEY_PAD) << (2 * COORD_BITS)) \
        | ((c[:, 2] + KEY_PAD) << COORD_BITS) | (c[:, 3] + KEY_PAD)


def unpack_keys(keys: Tensor) -> Tensor:
    """(M, 4) int64 ``[b, x, y, z]`` of keys made by :func:`pack_keys`."""
    return torch.stack([keys >> (3 * COORD_BITS), ((keys >> (2 * COORD_BITS)) & _FIELD) - KEY_PAD,
                        ((keys >> COORD_BITS) & _FIELD) - KEY_PAD, (keys & _FIELD) - KEY_PAD], dim=1)


def check_coords(coords: Tensor, source: str = "voxels") -> None:
    """Raise DataError unless ``coords`` is (M, 4) integer ``[b, x, y, z]`` that fits the keys."""
    if coords.dim() != 2 or coords.shape[1] != 4 or coords.dtype.is_floating_point:
        raise DataError(f"{source}: voxel coords must be an (M, 4) integer tensor [b, x, y, z], got "
                        f"{tuple(coords.shape)} {coords.dtype}")
    if len(coords) == 0:
        raise DataError(f"{source}: no voxels")
    lo = coords.amin(dim=0).tolist()
    hi = coords.amax(dim=0).tolist()
    if min(lo) < 0:
        raise DataError(f"{source}: voxel coords must be >= 0 (voxelize_scan shifts each scan), got a minimum {lo}")
    if hi[0] >= MAX_BATCH or max(hi[1:]) >= MAX_EXTENT:
        raise DataError(f"{source}: voxel coords exceed the key range (batch < {MAX_BATCH}, x, y, z < {MAX_EXTENT}), "
                        f"got a maximum {hi}")


def kernel_offsets(kernel_size: int, centred: bool = True) -> Tensor:
    """(k^3, 3) int64 offsets in lexicographic (dx, dy, dz) order: ``-k//2 .. k//2`` when centred
    (submanifold kernels), else ``0 .. k-1`` (strided / transposed kernels)."""
    lo = -(kernel_size // 2) if centred else 0
    r = torch.arange(lo, lo + kernel_size, dtype=torch.int64)
    return torch.cartesian_prod(r, r, r).reshape(-1, 3)


def offset_deltas(offsets: Tensor) -> Tensor:
    """(K,) int64 key differences of (K, 3) offsets (see :func:`pack_keys`)."""
    return (offsets[:, 0] << (2 * COORD_BITS)) + (offsets[:, 1] << COORD_BITS) + offsets[:, 2]


# ---------------------------------------------------------------------------------- kernel maps
@dataclass(eq=False)
class KernelMap:
    """Which input voxel feeds which output voxel through which kernel offset.

    Attributes:
        in_idx, out_idx: (P,) int64 pairs grouped by offset (offset 0's pairs first).
        counts: pairs per offset (K values, host integers).
        n_in, n_out: input and output voxels.
        identity: an offset whose pairs are ``i -> i`` for every voxel (the centre of a
            submanifold kernel); its pairs are not stored.
        in_unique: every input voxel appears in exactly one pair (down-sampling).
        out_unique: every output voxel appears in exactly one pair (up-sampling).
    """

    in_idx: Tensor
    out_idx: Tensor
    counts: tuple[int, ...]
    n_in: int
    n_out: int
    identity: int | None = None
    in_unique: bool = False
    out_unique: bool = False
    _neighbors: Tensor | None = field(default=None, repr=False)

    @property
    def kernel_volume(self) -> int:
        return len(self.counts)

    def pairs(self) -> int:
        """Number of (input, output) pairs, the identity offset included."""
        return int(self.in_idx.numel()) + (self.n_in if self.identity is not None else 0)

    def segments(self) -> list[tuple[int, Tensor, Tensor]]:
        """``(offset, in_idx, out_idx)`` of every offset with pairs (the identity excluded)."""
        out, start = [], 0
        for k, n in enumerate(self.counts):
            if n and k != self.identity:
                out.append((k, self.in_idx[start:start + n], self.out_idx[start:start + n]))
            start += n
        return out

    def reversed(self) -> KernelMap:
        """The map of the transposed convolution (inputs and outputs swapped, same offsets)."""
        return KernelMap(self.out_idx, self.in_idx, self.counts, self.n_out, self.n_in, self.identity,
                         in_unique=self.out_unique, out_unique=self.in_unique)

    def neighbors(self) -> Tensor:
        """(n_out, K) int64 table: the input voxel feeding each output through each offset, or
        ``n_in`` where there is none (an index to a zero row; used by the gathered-GEMM method)."""
        if self._neighbors is None:
            k = self.kernel_volume
            nb = torch.full((self.n_out * k,), self.n_in, dtype=torch.int64, device=self.in_idx.device)
            if self.identity is not None:
                ar = torch.arange(self.n_out, device=nb.device)
                nb[ar * k + self.identity] = ar
            offs = torch.repeat_interleave(torch.arange(k, device=nb.device),
                                           torch.tensor(self.counts, device=nb.device))
            if self.identity is not None:
                offs = offs[offs != self.identity] if self.counts[self.identity] else offs
            nb[self.out_idx * k + offs] = self.in_idx
            self._neighbors = nb.view(self.n_out, k)
        return self._neighbors


try:  # numba is a dependency; without it (or on CUDA) the maps use torch.searchsorted
    from numba import njit

    @njit(cache=True, nogil=True)
    def _merge_pairs(keys: Any, deltas: Any) -> Any:  # pragma: no cover - compiled
        """For each delta, the (p, j) with keys[j] == keys[p] + delta: one merge walk of the two
        sorted sequences keys and keys + delta (linear time) per delta."""
        n, h = len(keys), len(deltas)
        outs = np.empty((h, n), dtype=np.int64)
        ins = np.empty((h, n), dtype=np.int64)
        counts = np.zeros(h, dtype=np.int64)
        for k in range(h):
            d = deltas[k]
            j = 0
            c = 0
            for p in range(n):
                q = keys[p] + d
                while j < n and keys[j] < q:
                    j += 1
                if j == n:
                    break
                if keys[j] == q:
                    outs[k, c] = p
                    ins[k, c] = j
                    c += 1
            counts[k] = c
        return outs, ins, counts

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False


def _half_pairs_numba(keys: Tensor, deltas: list[int]) -> list[tuple[Tensor, Tensor]]:
    outs, ins, counts = _merge_pairs(keys.numpy(), np.asarray(deltas, dtype=np.int64))
    res = []
    for k, c in enumerate(counts.tolist()):
        res.append((torch.from_numpy(ins[k, :c].copy()), torch.from_numpy(outs[k, :c].copy())))
    return res


def _half_pairs_torch(keys: Tensor, deltas: list[int]) -> list[tuple[Tensor, Tensor]]:
    n = len(keys)
    res = []
    for d in deltas:
        q = keys + d
        pos = torch.searchsorted(keys, q).clamp_(max=n - 1)
        hit = keys.index_select(0, pos) == q
        o = hit.nonzero().squeeze(1)  # voxels p whose neighbour p + d exists
        res.append((pos.index_select(0, o), o))  # that neighbour (increasing, as q is sorted)
    return res


def submanifold_map(keys: Tensor, kernel_size: int) -> KernelMap:
    """Kernel map of a submanifold convolution over voxels with sorted unique ``keys``.

    Offsets ``d`` and ``-d`` give mirrored pairs, so only the first half of the offsets is
    searched; the centre is the identity. On the CPU a compiled merge walk of ``keys`` and
    ``keys + delta(d)`` finds the pairs (linear time), elsewhere ``torch.searchsorted``.
    """
    if kernel_size % 2 == 0 or kernel_size < 1 or kernel_size // 2 > KEY_PAD:
        raise ConfigError(f"submanifold kernels must be odd and at most {2 * KEY_PAD + 1}, got {kernel_size}")
    n = len(keys)
    offs = kernel_offsets(kernel_size)
    kv = len(offs)
    centre = kv // 2
    deltas = offset_deltas(offs).tolist()
    ins: list[Tensor | None] = [None] * kv
    outs: list[Tensor | None] = [None] * kv
    half = (_half_pairs_numba if _HAVE_NUMBA and keys.device.type == "cpu" else _half_pairs_torch)(keys, deltas[:centre])
    for k, (i, o) in enumerate(half):
        ins[k], outs[k] = i, o
        ins[kv - 1 - k], outs[kv - 1 - k] = o, i
    counts = [0 if t is None else int(t.numel()) for t in ins]
    counts[centre] = 0
    empty = keys.new_empty(0)
    in_idx = torch.cat([t if t is not None else empty for t in ins]) if kv > 1 else empty
    out_idx = torch.cat([t if t is not None else empty for t in outs]) if kv > 1 else empty
    return KernelMap(in_idx, out_idx, tuple(counts), n, n, identity=centre)


def downsample_map(coords: Tensor, stride: int) -> tuple[KernelMap, Tensor, Tensor]:
    """Kernel map of a strided convolution with kernel = ``stride``, and the coarse voxels.

    Args:
        coords: (M, 4) ``[b, x, y, z]`` of the fine voxels.
        stride: the down-sampling factor ``s`` (also the kernel size).

    Returns:
        (map, coarse coords (M', 4), coarse keys (M',) sorted): every fine voxel feeds its parent
        ``floor(p / s)`` through offset ``p - s floor(p / s)``.
    """
    if stride < 2:
        raise ConfigError(f"down-sampling stride must be >= 2, got {stride}")
    parent = coords.clone()
    parent[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor")
    pkeys = pack_keys(parent)
    ukeys, inv = torch.unique(pkeys, sorted=True, return_inverse=True)
    rem = coords[:, 1:] - parent[:, 1:] * stride
    code = (rem[:, 0] * stride + rem[:, 1]) * stride + rem[:, 2]
    kv = stride ** 3
    order = torch.argsort(code, stable=True)
    counts = torch.bincount(code, minlength=kv).tolist()
    km = KernelMap(order, inv.index_select(0, order), tuple(int(c) for c in counts), len(coords), len(ukeys),
                   in_unique=True)
    return km, unpack_keys(ukeys), ukeys


# ------------------------------------------------------------------------------- the operation
def _max_count(km: KernelMap) -> int:
    return max((n for k, n in enumerate(km.counts) if k != km.identity), default=0)


def _mm_forward(feats: Tensor, weight: Tensor, bias: Tensor | None, km: KernelMap) -> Tensor:
    cout = weight.shape[2]
    if km.identity is not None:
        out = feats @ weight[km.identity] if bias is None else torch.addmm(bias, feats, weight[km.identity])
        bias = None
    elif km.out_unique:
        out = feats.new_empty(km.n_out, cout)
    else:
        out = feats.new_zeros(km.n_out, cout)
    # one gather and one product buffer for all offsets (fewer large allocations)
    top = _max_count(km)
    gbuf = feats.new_empty(top, feats.shape[1])
    pbuf = feats.new_empty(top, cout)
    for k, i, o in km.segments():
        n = len(i)
        g = torch.index_select(feats, 0, i, out=gbuf[:n])
        prod = torch.mm(g, weight[k], out=pbuf[:n])
        if km.out_unique:
            out.index_copy_(0, o, prod)
        else:
            out.index_add_(0, o, prod)
    if bias is not None:
        out += bias
    return out


def _mm_backward(grad: Tensor, feats: Tensor, weight: Tensor, km: KernelMap, need_x: bool, need_w: bool
                 ) -> tuple[Tensor | None, Tensor | None]:
    gx: Tensor | None = None
    gw: Tensor | None = None
    cin, cout = weight.shape[1], weight.shape[2]
    if need_x:
        if km.identity is not None:
            gx = grad @ weight[km.identity].t()
        elif km.in_unique:
            gx = grad.new_empty(km.n_in, cin)
        else:
            gx = grad.new_zeros(km.n_in, cin)
    if need_w:
        gw = torch.zeros_like(weight)
        if km.identity is not None:
            torch.mm(feats.t(), grad, out=gw[km.identity])
    top = _max_count(km)
    gbuf = grad.new_empty(top, cout)
    fbuf = feats.new_empty(top, cin) if need_w else None
    pbuf = grad.new_empty(top, cin) if gx is not None else None
    for k, i, o in km.segments():
        n = len(i)
        g = torch.index_select(grad, 0, o, out=gbuf[:n])
        if gw is not None:
            assert fbuf is not None
            torch.mm(torch.index_select(feats, 0, i, out=fbuf[:n]).t(), g, out=gw[k])
        if gx is not None:
            assert pbuf is not None
            prod = torch.mm(g, weight[k].t(), out=pbuf[:n])
            if km.in_unique:
                gx.index_copy_(0, i, prod)
            else:
                gx.index_add_(0, i, prod)
    return gx, gw


GEMM_CHUNK = 4096
"""Output rows per block of the gathered-GEMM method (bounds its (rows, K * C_in) buffer)."""


def _gemm_forward(feats: Tensor, weight: Tensor, bias: Tensor | None, km: KernelMap) -> Tensor:
    nb = km.neighbors()
    kv, cin, cout = weight.shape
    fz = torch.cat([feats, feats.new_zeros(1, cin)])
    w2 = weight.reshape(kv * cin, cout)
    out = feats.new_empty(km.n_out, cout)
    for s in range(0, km.n_out, GEMM_CHUNK):
        rows = nb[s:s + GEMM_CHUNK]
        torch.mm(fz.index_select(0, rows.reshape(-1)).view(len(rows), kv * cin), w2, out=out[s:s + GEMM_CHUNK])
    if bias is not None:
        out += bias
    return out


def _gemm_backward(grad: Tensor, feats: Tensor, weight: Tensor, km: KernelMap, need_x: bool, need_w: bool
                   ) -> tuple[Tensor | None, Tensor | None]:
    nb = km.neighbors()
    kv, cin, cout = weight.shape
    fz = torch.cat([feats, feats.new_zeros(1, cin)])
    w2 = weight.reshape(kv * cin, cout)
    gw = torch.zeros(kv * cin, cout, dtype=weight.dtype, device=weight.device) if need_w else None
    gx = grad.new_zeros(km.n_in + 1, cin) if need_x else None
    for s in range(0, km.n_out, GEMM_CHUNK):
        rows = nb[s:s + GEMM_CHUNK]
        g = grad[s:s + GEMM_CHUNK]
        if gw is not None:
            gw.addmm_(fz.index_select(0, rows.reshape(-1)).view(len(rows), kv * cin).t(), g)
        if gx is not None:
            gx.index_add_(0, rows.reshape(-1), (g @ w2.t()).view(-1, cin))
    return (gx[:-1] if gx is not None else None), (gw.view(kv, cin, cout) if gw is not None else None)


Method = Literal["mm", "gemm"]


class _SparseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, feats: Tensor, weight: Tensor, bias: Tensor | None, km: KernelMap,  # type: ignore[override]
                method: str) -> Tensor:
        ctx.save_for_backward(feats, weight)
        ctx.km, ctx.method, ctx.has_bias = km, method, bias is not None
        return (_gemm_forward if method == "gemm" else _mm_forward)(feats, weight, bias, km)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        feats, weight = ctx.saved_tensors
        grad = grad.contiguous()
        fn = _gemm_backward if ctx.method == "gemm" else _mm_backward
        gx, gw = fn(grad, feats, weight, ctx.km, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


def sparse_conv(feats: Tensor, weight: Tensor, km: KernelMap, bias: Tensor | None = None,
                method: Method = "mm") -> Tensor:
    """Apply a sparse convolution: (n_in, C_in) features, (K, C_in, C_out) weights and an optional
    (C_out,) bias -> (n_out, C_out).

    ``method``: ``"mm"`` gathers, multiplies and scatter-adds offset by offset (work proportional
    to the pairs); ``"gemm"`` gathers each output's K neighbours into one (rows, K * C_in) block
    (zeros for empty offsets) and does one matrix product per block of rows. Under autocast both
    run in the autocast dtype.
    """
    if weight.dim() != 3 or weight.shape[0] != km.kernel_volume or feats.shape[1] != weight.shape[1]:
        raise ValueError(f"sparse_conv: weight {tuple(weight.shape)} does not fit features {tuple(feats.shape)} "
                         f"and a kernel of {km.kernel_volume} offsets")
    dev = feats.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        feats, weight = feats.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        with torch.autocast(dev, enabled=False):
            return _SparseConvFunction.apply(feats.contiguous(), weight, bias, km, method)
    if weight.dtype != feats.dtype:
        weight = weight.to(feats.dtype)
        bias = bias.to(feats.dtype) if bias is not None else None
    return _SparseConvFunction.apply(feats.contiguous(), weight, bias, km, method)


# ----------------------------------------------------------------------------- sparse tensors
def spconv_available() -> bool:
    """True when ``spconv`` (2.x) can be imported."""
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``torch`` or ``spconv`` for a requested backend on a device (``auto``: spconv on CUDA
    when installed, else torch)."""
    if backend not in ("auto", "torch", "spconv"):
        raise ConfigError(f"unknown sparse convolution backend {backend!r} (known: auto, torch, spconv)")
    if backend == "auto":
        return "spconv" if device.type == "cuda" and spconv_available() else "torch"
    if backend == "spconv" and not spconv_available():
        raise ConfigError("sparse convolution backend 'spconv' requested but spconv is not installed "
                          "(pip install spconv, or spconv-cu120 etc. for CUDA; or use backend torch)")
    return backend


class SparseContext:
    """What every level of one forward pass shares: the voxel keys and coordinates of each stride,
    the kernel maps (computed once, reused by every convolution at their level) and the backend.

    Attributes:
        batch_size: scans in the batch.
        backend: ``torch`` or ``spconv`` (resolved).
        method: ``mm`` or ``gemm`` (torch backend, see :func:`sparse_conv`).
        levels: stride -> (coords (M, 4), sorted keys (M,)).
        maps: cache key -> :class:`KernelMap`.
        sorted_order: how :meth:`SparseTensor.from_voxels` permuted unsorted input voxels
            (``sorted = given[sorted_order]``), None when they came sorted.
    """

    def __init__(self, batch_size: int, backend: str = "torch", method: Method = "mm") -> None:
        self.batch_size = int(batch_size)
        self.backend = backend
        self.method: Method = method
        self.levels: dict[int, tuple[Tensor, Tensor]] = {}
        self.maps: dict[tuple[Any, ...], KernelMap] = {}
        self.spconv: dict[int, Any] = {}  # stride -> spconv.SparseConvTensor holding that level's indices
        self.spconv_indices: dict[str, Any] = {}  # spconv's shared indice_dict
        self.sorted_order: Tensor | None = None

    def submanifold(self, stride: int, kernel_size: int) -> KernelMap:
        key = ("subm", stride, kernel_size)
        if key not in self.maps:
            self.maps[key] = submanifold_map(self.levels[stride][1], kernel_size)
        return self.maps[key]

    def down(self, stride: int, factor: int) -> KernelMap:
        key = ("down", stride, factor)
        if key not in self.maps:
            km, coarse, ckeys = downsample_map(self.levels[stride][0], factor)
            self.maps[key] = km
            self.levels.setdefault(stride * factor, (coarse, ckeys))
        return self.maps[key]

    def up(self, stride: int, factor: int) -> KernelMap:
        """Map from stride ``stride`` back to ``stride // factor`` (the reverse of :meth:`down`)."""
        key = ("up", stride, factor)
        if key not in self.maps:
            fine = stride // factor
            if fine * factor != stride or fine not in self.levels:
                raise ValueError(f"no level of stride {fine} to up-sample stride {stride} to")
            self.maps[key] = self.down(fine, factor).reversed()
        return self.maps[key]


@dataclass(eq=False)
class SparseTensor:
    """Features of the occupied voxels of one level (see the module docstring).

    Attributes:
        feats: (M, C) features.
        coords: (M, 4) int64 ``[b, x, y, z]`` in units of ``stride`` base voxels, sorted by key.
        stride: the level's voxel size in base voxels (1, 2, 4, ...).
        context: shared by every level of the forward pass.
    """

    feats: Tensor
    coords: Tensor
    stride: int
    context: SparseContext

    @classmethod
    def from_voxels(cls, feats: Tensor, coords: Tensor, batch_size: int | None = None, backend: str = "torch",
                    method: Method = "mm", source: str = "voxels") -> SparseTensor:
        """The base level (stride 1) of voxels with unique ``coords`` (M, 4) ``[b, x, y, z]``.

        Coordinates need not be sorted: ``sorted_order`` of the returned tensor's context says
        how they were permuted (None when they already were)."""
        check_coords(coords, source)
        if len(feats) != len(coords):
            raise DataError(f"{source}: {len(feats)} feature rows for {len(coords)} voxels")
        coords = coords.to(torch.int64)
        keys = pack_keys(coords)
        order = None
        if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
            keys, order = torch.sort(keys)
            if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
                raise DataError(f"{source}: two voxels share coordinates (voxelise with voxelize_scan)")
            coords, feats = coords.index_select(0, order), feats.index_select(0, order)
        bs = int(coords[:, 0].max()) + 1 if batch_size is None else int(batch_size)
        ctx = SparseContext(bs, backend, method)
        ctx.levels[1] = (coords, keys)
        ctx.sorted_order = order
        return cls(feats, coords, 1, ctx)

    def replace(self, feats: Tensor) -> SparseTensor:
        """The same voxels with other features."""
        return SparseTensor(feats, self.coords, self.stride, self.context)

    @property
    def num_voxels(self) -> int:
        return int(self.feats.shape[0])


# ------------------------------------------------------------------------------------ layers
class _SparseConvBase(nn.Module):
    """Weight (K, C_in, C_out) and optional bias; initialised like ``nn.Conv3d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        kv = self.kernel_size ** 3
        self.weight = nn.Parameter(torch.empty(kv, self.in_channels, self.out_channels))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.weight.shape[0] * self.in_channels
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)), nn.Conv3d's default
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"

    def spconv_weight(self, weight: Tensor | None = None) -> Tensor:
        """A (K, C_in, C_out) weight (default: this layer's) in spconv's (C_out, k, k, k, C_in)
        layout (differentiable)."""
        w = self.weight if weight is None else weight
        k = self.kernel_size
        return w.permute(2, 0, 1).reshape(w.shape[2], k, k, k, w.shape[1]).contiguous()

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.apply_weight(x, self.weight, self.bias)

    def apply_weight(self, x: SparseTensor, weight: Tensor, bias: Tensor | None = None) -> SparseTensor:
        """The convolution of ``x`` with ``weight`` (K, C_in, C_out) and ``bias`` (C_out,) instead of
        the layer's own parameters (batch norms folded in at inference)."""
        raise NotImplementedError

    def _spconv_module(self, kind: str, indice_key: str) -> Any:
        cache = self.__dict__.setdefault("_spconv_modules", {})
        key = (kind, indice_key)
        if key not in cache:
            import spconv.pytorch as spconv

            cls = {"subm": spconv.SubMConv3d, "down": spconv.SparseConv3d, "up": spconv.SparseInverseConv3d}[kind]
            kw: dict[str, Any] = {"indice_key": indice_key, "bias": False}
            if kind == "down":
                kw["stride"] = self.kernel_size
            mod = cls(self.in_channels, self.out_channels, self.kernel_size, **kw)
            del mod.weight  # the weight comes from this layer at each call
            cache[key] = mod
        return cache[key]


SPCONV_SHAPE_MULTIPLE = 256
"""spconv's spatial shape is rounded up to a multiple of this, so every stride-2 level keeps its
last row of voxels (spconv drops children beyond ``2 * floor(S / 2)``)."""


def _spconv_input(x: SparseTensor) -> Any:
    """The spconv tensor of ``x``'s level with ``x``'s features (same voxel order)."""
    ctx = x.context
    base = ctx.spconv.get(x.stride)
    if base is None:
        import spconv.pytorch as spconv

        m = SPCONV_SHAPE_MULTIPLE
        shape = [(int(v) // m + 1) * m for v in x.coords[:, 1:].amax(dim=0).tolist()]
        base = spconv.SparseConvTensor(x.feats, x.coords.to(torch.int32).contiguous(), shape, ctx.batch_size)
        ctx.spconv[x.stride] = base
    sp = base.replace_feature(x.feats.contiguous())
    sp.indice_dict = dict(ctx.spconv_indices)
    return sp


class _OneThread:
    """Run a block with one intra-op thread: spconv 2.3.8's CPU kernels race with more (20 calls
    of one convolution on 2 threads gave 20 different results, some off by 0.3)."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.threads = 0

    def __enter__(self) -> None:
        if self.active:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.set_num_threads(self.threads)


def _spconv_call(mod: Any, x: SparseTensor, weight: Tensor, training: bool) -> Any:
    sp = _spconv_input(x)
    if sp.features.dtype != weight.dtype:
        weight = weight.to(sp.features.dtype)
    with _OneThread(x.feats.device.type == "cpu"):
        out = mod._conv_forward(training, sp, weight, None)
    x.context.spconv_indices.update(out.indice_dict)
    return out


def _plus(feats: Tensor, bias: Tensor | None) -> Tensor:
    return feats if bias is None else feats + bias


class SubmanifoldConv3d(_SparseConvBase):
    """Submanifold convolution (odd ``kernel_size``, outputs at the input voxels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False) -> None:
        if kernel_size % 2 == 0:
            raise ConfigError(f"submanifold kernels must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def apply_weight(self, x: SparseTensor, weight: Tensor, bias: Tensor | None = None) -> SparseTensor:
        ctx = x.context
        if ctx.backend == "spconv":
            out = _spconv_call(self._spconv_module("subm", f"subm{x.stride}k{self.kernel_size}"), x,
                               self.spconv_weight(weight), self.training)
            return x.replace(_plus(out.features, bias))
        km = ctx.submanifold(x.stride, self.kernel_size)
        return x.replace(sparse_conv(x.feats, weight, km, bias, ctx.method))


class StridedConv3d(_SparseConvBase):
    """Down-sampling convolution with kernel = stride (to the occupied coarse voxels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, stride, bias)

    def apply_weight(self, x: SparseTensor, weight: Tensor, bias: Tensor | None = None) -> SparseTensor:
        ctx, s = x.context, self.kernel_size
        coarse = x.stride * s
        if ctx.backend == "spconv":
            out = _spconv_call(self._spconv_module("down", f"down{x.stride}"), x, self.spconv_weight(weight),
                               self.training)
            ctx.spconv.setdefault(coarse, out)
            return SparseTensor(_plus(out.features, bias), out.indices.to(torch.int64), coarse, ctx)
        km = ctx.down(x.stride, s)
        return SparseTensor(sparse_conv(x.feats, weight, km, bias, ctx.method), ctx.levels[coarse][0], coarse, ctx)


class TransposedConv3d(_SparseConvBase):
    """Transposed convolution with kernel = stride: back to the finer level that was down-sampled."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, stride, bias)

    def apply_weight(self, x: SparseTensor, weight: Tensor, bias: Tensor | None = None) -> SparseTensor:
        ctx, s = x.context, self.kernel_size
        fine = x.stride // s
        if ctx.backend == "spconv":
            out = _spconv_call(self._spconv_module("up", f"down{fine}"), x, self.spconv_weight(weight), self.training)
            return SparseTensor(_plus(out.features, bias), ctx.spconv[fine].indices.to(torch.int64), fine, ctx)
        km = ctx.up(x.stride, s)
        return SparseTensor(sparse_conv(x.feats, weight, km, bias, ctx.method), ctx.levels[fine][0], fine, ctx)
