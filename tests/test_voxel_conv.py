"""Pure-PyTorch sparse 3D convolution: equal to dense conv3d / conv_transpose3d at the active
sites (values and gradients), kernel maps, keys, the spconv backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from terraseg.errors import DataError
from terraseg.models.points.sparse_conv import (
    KernelMap,
    SparseContext,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    downsample_map,
    kernel_offsets,
    pack_keys,
    sparse_conv,
    spconv_available,
    submanifold_map,
    unpack_keys,
)

GRID = (7, 6, 5)  # odd sizes: coarse voxels at the border have fewer children


def random_voxels(n: int = 120, batch: int = 2, grid: tuple[int, int, int] = GRID, seed: int = 0) -> torch.Tensor:
    """(M, 4) unique [b, x, y, z] coordinates in a small grid, in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    c = torch.stack([torch.randint(0, batch, (n,), generator=g)] +
                    [torch.randint(0, s, (n,), generator=g) for s in grid], dim=1)
    c = torch.unique(c, dim=0)
    return c[torch.randperm(len(c), generator=g)]


def to_dense(feats: torch.Tensor, coords: torch.Tensor, batch: int, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, C, X, Y, Z) grid with the features at their voxels and zeros elsewhere (differentiable)."""
    d = torch.zeros(batch, *grid, feats.shape[1], dtype=feats.dtype)
    d = d.index_put((coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]), feats)
    return d.permute(0, 4, 1, 2, 3)


def at(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    return dense[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]]


def dense_weight(conv: torch.nn.Module) -> torch.Tensor:
    """conv3d weight (C_out, C_in, k, k, k) of a sparse layer's (K, C_in, C_out) weight."""
    k = conv.kernel_size
    return conv.weight.view(k, k, k, conv.in_channels, conv.out_channels).permute(4, 3, 0, 1, 2)


@pytest.mark.parametrize("method", ["mm", "gemm"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_submanifold_equals_dense_conv3d_values_and_gradients(method: str, kernel: int) -> None:
    torch.manual_seed(0)
    coords = random_voxels()
    cin, cout = 3, 4
    feats = torch.randn(len(coords), cin, dtype=torch.float64, requires_grad=True)
    conv = SubmanifoldConv3d(cin, cout, kernel, bias=True).double()
    x = SparseTensor.from_voxels(feats, coords, batch_size=2, method=method)
    order = x.context.sorted_order
    assert order is not None  # the shuffled voxels were sorted by key
    y = conv(x)
    assert torch.equal(y.coords, coords[order])
    grad_out = torch.randn_like(y.feats)
    gx, gw, gb = torch.autograd.grad(y.feats, [feats, conv.weight, conv.bias], grad_out)

    dense_in = to_dense(feats, coords, 2, GRID)
    ref = at(F.conv3d(dense_in, dense_weight(conv), conv.bias, padding=kernel // 2), y.coords)
    torch.testing.assert_close(y.feats, ref, rtol=1e-10, atol=1e-10)
    rx, rw, rb = torch.autograd.grad(ref, [feats, conv.weight, conv.bias], grad_out)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gb, rb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["mm", "gemm"])
def test_strided_and_transposed_equal_dense_references(method: str) -> None:
    torch.manual_seed(1)
    coords = random_voxels(seed=1)
    cin, cmid = 3, 5
    padded = tuple(s + s % 2 for s in GRID)  # dense stride-2 convs need even sizes
    feats = torch.randn(len(coords), cin, dtype=torch.float64, requires_grad=True)
    down = StridedConv3d(cin, cmid, 2).double()
    up = TransposedConv3d(cmid, cin, 2).double()
    x = SparseTensor.from_voxels(feats, coords, batch_size=2, method=method)
    y = down(x)
    assert y.stride == 2
    # every occupied coarse voxel, exactly once
    expect = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2], dim=1), dim=0)
    assert torch.equal(y.coords, expect)
    z = up(y)
    assert z.stride == 1 and torch.equal(z.coords, x.coords)
    g_y, g_z = torch.randn_like(y.feats), torch.randn_like(z.feats)
    grads = torch.autograd.grad([y.feats, z.feats], [feats, down.weight, up.weight], [g_y, g_z])

    dense_in = to_dense(feats, coords, 2, padded)
    ref_y_dense = F.conv3d(dense_in, dense_weight(down), stride=2)
    ref_y = at(ref_y_dense, y.coords)
    # the transposed conv reads only the occupied coarse voxels (the others are zero)
    coarse_in = to_dense(ref_y, y.coords, 2, tuple(s // 2 for s in padded))
    w_up = up.weight.view(2, 2, 2, cmid, cin).permute(3, 4, 0, 1, 2)  # conv_transpose3d: (C_in, C_out, k, k, k)
    ref_z = at(F.conv_transpose3d(coarse_in, w_up, stride=2), z.coords)
    torch.testing.assert_close(y.feats, ref_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z.feats, ref_z, rtol=1e-10, atol=1e-10)
    ref_grads = torch.autograd.grad([ref_y, ref_z], [feats, down.weight, up.weight], [g_y, g_z])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_gradcheck_of_the_autograd_function() -> None:
    coords = random_voxels(60, seed=2)
    x = SparseTensor.from_voxels(torch.zeros(len(coords), 2), coords)
    for km in (x.context.submanifold(1, 3), x.context.down(1, 2), x.context.up(2, 2)):
        a = torch.randn(km.n_in, 2, dtype=torch.float64, requires_grad=True)
        w = torch.randn(km.kernel_volume, 2, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, w, b, km=km: sparse_conv(a, w, km, b), (a, w, b))


def test_kernel_maps_are_computed_once_per_level_and_shared() -> None:
    coords = random_voxels(200, seed=3)
    x = SparseTensor.from_voxels(torch.randn(len(coords), 4), coords)
    a, b = SubmanifoldConv3d(4, 4), SubmanifoldConv3d(4, 4)
    a(x)
    km = x.context.maps[("subm", 1, 3)]
    b(a(x))
    assert x.context.maps[("subm", 1, 3)] is km and len(x.context.maps) == 1
    y = StridedConv3d(4, 4)(x)
    y2 = StridedConv3d(4, 8)(x)
    assert torch.equal(y.coords, y2.coords) and len(x.context.maps) == 2
    TransposedConv3d(8, 4)(y2)
    assert x.context.maps[("up", 2, 2)].in_idx is x.context.maps[("down", 1, 2)].out_idx  # the reverse, not a copy


def test_submanifold_map_finds_exactly_the_neighbours() -> None:
    coords = random_voxels(150, seed=4)
    keys, order = torch.sort(pack_keys(coords))
    c = coords[order]
    km = submanifold_map(keys, 3)
    offs = kernel_offsets(3)
    assert km.identity == 13 and km.counts[13] == 0
    start = 0
    for k, n in enumerate(km.counts):
        i, o = km.in_idx[start:start + n], km.out_idx[start:start + n]
        start += n
        assert torch.equal(c[i, 1:] - c[o, 1:], offs[k].expand(n, 3)) and torch.equal(c[i, 0], c[o, 0])
        # brute force: every pair at this offset is found
        diff = c[None, :, 1:] - c[:, None, 1:]
        same_b = c[None, :, 0] == c[:, None, 0]
        brute = int(((diff == offs[k]).all(-1) & same_b).sum()) if k != 13 else 0
        assert n == brute
    nb = km.neighbors()
    assert nb.shape == (len(c), 27) and torch.equal(nb[:, 13], torch.arange(len(c)))


def test_keys_round_trip_and_downsample_map() -> None:
    coords = random_voxels(80, batch=3, seed=5)
    assert torch.equal(unpack_keys(pack_keys(coords)), coords)
    km, coarse, ckeys = downsample_map(coords, 2)
    assert km.in_unique and sum(km.counts) == len(coords)
    assert torch.equal(pack_keys(coarse), ckeys) and bool((ckeys[1:] > ckeys[:-1]).all())
    assert torch.equal(coarse[km.out_idx, 1:], coords[km.in_idx, 1:] // 2)


def test_bad_coordinates_are_clear_errors() -> None:
    with pytest.raises(DataError, match="must be >= 0"):
        SparseTensor.from_voxels(torch.zeros(2, 1), torch.tensor([[0, -1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(DataError, match="share coordinates"):
        SparseTensor.from_voxels(torch.zeros(2, 1), torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]]))
    with pytest.raises(DataError, match="exceed the key range"):
        SparseTensor.from_voxels(torch.zeros(1, 1), torch.tensor([[0, 1 << 20, 0, 0]]))
    with pytest.raises(DataError, match=r"\(M, 4\) integer"):
        SparseTensor.from_voxels(torch.zeros(1, 1), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="does not fit"):
        sparse_conv(torch.zeros(3, 2), torch.zeros(27, 3, 1), KernelMap(torch.zeros(0, dtype=torch.int64),
                                                                         torch.zeros(0, dtype=torch.int64),
                                                                         (0,) * 27, 3, 3, 13))


def test_autocast_runs_in_the_autocast_dtype() -> None:
    coords = random_voxels(100, seed=6)
    conv = SubmanifoldConv3d(4, 6)
    x = SparseTensor.from_voxels(torch.randn(len(coords), 4), coords)
    ref = conv(x).feats
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x).feats
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)


def test_context_rejects_an_unknown_backend() -> None:
    from terraseg.errors import ConfigError
    from terraseg.models.points.sparse_conv import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="unknown sparse convolution backend"):
        resolve_backend("minkowski", torch.device("cpu"))
    assert SparseContext(1).backend == "torch"


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed (pip install spconv)")
def test_spconv_backend_agrees_with_the_pure_one_forward() -> None:
    """spconv's CPU build runs forward only; the same weights give the same features at every
    layer kind (its coarse voxels come in its own order, compared by coordinates)."""
    torch.manual_seed(7)
    coords = random_voxels(400, grid=(12, 11, 9), seed=7)
    feats = torch.randn(len(coords), 5)
    sub, down, sub2, up = SubmanifoldConv3d(5, 6), StridedConv3d(6, 7), SubmanifoldConv3d(7, 7), TransposedConv3d(7, 4)

    def run(backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = SparseTensor.from_voxels(feats, coords, batch_size=2, backend=backend)
        a = sub(x)
        b = sub2(down(a))
        return a.feats, b.feats, b.coords, up(b).feats

    with torch.no_grad():
        pure, sp = run("torch"), run("spconv")
    torch.testing.assert_close(sp[0], pure[0], rtol=1e-4, atol=1e-4)
    order = torch.argsort(pack_keys(sp[2]))
    assert torch.equal(sp[2][order], pure[2])
    torch.testing.assert_close(sp[1][order], pure[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sp[3], pure[3], rtol=1e-4, atol=1e-4)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@CUDA
@pytest.mark.parametrize("method", ["mm", "gemm"])
def test_cuda_convolutions_equal_the_cpu_ones(method: str) -> None:
    """Kernel maps from torch.searchsorted on the GPU (the CPU uses a compiled merge walk), the same
    values and gradients."""
    coords = random_voxels(600, grid=(16, 15, 13), seed=8)
    feats = torch.randn(len(coords), 6, dtype=torch.float64)
    layers = [SubmanifoldConv3d(6, 7).double(), StridedConv3d(7, 8).double(), TransposedConv3d(8, 5).double()]

    def run(device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f = feats.to(device).requires_grad_(True)
        mods = [m.to(device) for m in layers]
        x = SparseTensor.from_voxels(f, coords.to(device), method=method)
        out = mods[2](mods[1](mods[0](x))).feats
        grads = torch.autograd.grad(out, [f] + [m.weight for m in mods], torch.ones_like(out))
        return out.cpu(), [g.cpu() for g in grads]

    out_cpu, g_cpu = run("cpu")
    out_gpu, g_gpu = run("cuda")
    torch.testing.assert_close(out_gpu, out_cpu, rtol=1e-9, atol=1e-9)
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@CUDA
@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed")
def test_spconv_backend_agrees_on_cuda_forward_and_backward() -> None:
    torch.manual_seed(9)
    coords = random_voxels(2000, grid=(30, 28, 12), seed=9).cuda()
    feats = torch.randn(len(coords), 8, device="cuda")
    layers = [SubmanifoldConv3d(8, 16).cuda(), StridedConv3d(16, 16).cuda(), SubmanifoldConv3d(16, 16).cuda(),
              TransposedConv3d(16, 8).cuda()]

    def run(backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f = feats.clone().requires_grad_(True)
        x = SparseTensor.from_voxels(f, coords, batch_size=2, backend=backend)
        out = layers[3](layers[2](layers[1](layers[0](x)))).feats
        grads = torch.autograd.grad(out, [f] + [m.weight for m in layers], torch.ones_like(out))
        return out, list(grads)

    pure, sp = run("torch"), run("spconv")
    torch.testing.assert_close(sp[0], pure[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(sp[1], pure[1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)
