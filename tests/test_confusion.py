"""ConfusionMatrix: counting, ignore ids, validation, merging, persistence, torch, distributed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from terraseg.errors import DataError
from terraseg.metrics import ConfusionMatrix


def brute_force(pred: np.ndarray, gt: np.ndarray, c: int, ignore: tuple[int, ...] = ()) -> np.ndarray:
    m = np.zeros((c, c), dtype=np.int64)
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g in ignore:
            continue
        m[g, p] += 1
    return m


def test_hand_computed_matrix_rows_are_ground_truth() -> None:
    gt = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    cm = ConfusionMatrix(3).update(pred, gt)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert cm.total == 6


def test_ignore_ids_are_not_counted_in_any_row_or_column() -> None:
    gt = np.array([0, 255, 1, 0, 255], dtype=np.uint8)
    pred = np.array([0, 1, 1, 1, 0], dtype=np.uint8)
    cm = ConfusionMatrix(2, ignore_ids=[255]).update(pred, gt)
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]


def test_ignored_class_inside_range() -> None:
    gt = np.array([0, 1, 2, 2])
    pred = np.array([1, 1, 2, 0])
    cm = ConfusionMatrix(3, ignore_ids=[0]).update(pred, gt)
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 1]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint32, np.uint64])
def test_all_integer_dtypes_give_the_same_matrix(dtype: type) -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 7, size=(33, 17))
    pred = rng.integers(0, 7, size=(33, 17))
    ref = brute_force(pred, gt, 7, ignore=(3,))
    cm = ConfusionMatrix(7, ignore_ids=[3]).update(pred.astype(dtype), gt.astype(dtype))
    np.testing.assert_array_equal(cm.matrix, ref)


def test_large_ids_and_negative_values_are_reported() -> None:
    cm = ConfusionMatrix(5, ignore_ids=[255])
    with pytest.raises(DataError, match=r"1 ground-truth values are not class ids .*valid: 0\.\.4; ignored: \[255\]"):
        cm.update(np.array([0, 1, 2, 3]), np.array([0, 1, 255, 100000]))
    with pytest.raises(DataError, match=r"2 predicted values"):
        cm.update(np.array([0, -1, 9, 3], dtype=np.int64), np.array([0, 1, 2, 3]))
    assert cm.total == 0  # a failed update adds nothing
    # an invalid prediction where the ground truth is ignored is harmless
    cm.update(np.array([0, 77]), np.array([0, 255]))
    assert cm.total == 1


def test_many_classes_and_large_ids_take_the_lookup_path() -> None:
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 2000, 500)
    pred = rng.integers(0, 2000, 500)
    gt[:10] = 5000  # an ignore id far beyond the classes
    cm = ConfusionMatrix(2000, ignore_ids=[5000]).update(pred, gt)
    np.testing.assert_array_equal(cm.matrix, brute_force(pred, gt, 2000, ignore=(5000,)))
    small = ConfusionMatrix(3, ignore_ids=[4000]).update(np.array([0, 1, 2]), np.array([4000, 1, 2]))
    assert small.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_sparse_valid_ids() -> None:
    cm = ConfusionMatrix(6, valid_ids=[0, 1, 5])
    cm.update(np.array([0, 5, 1]), np.array([0, 5, 5]))
    assert cm.matrix[5, 5] == 1 and cm.matrix[5, 1] == 1
    with pytest.raises(DataError, match=r"1 ground-truth values .*valid: 0, 1, 5"):
        cm.update(np.array([0]), np.array([3]))


def test_shape_mismatch_and_float_labels() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match=r"prediction shape \(2,\) differs from ground-truth shape \(3,\)"):
        cm.update(np.zeros(2, np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="integer dtype"):
        cm.update(np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_logits_are_reduced_with_argmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    gt = rng.integers(0, 4, size=(2, 5, 6))
    a = ConfusionMatrix(4).update(logits, gt)
    b = ConfusionMatrix(4).update(logits.argmax(1), gt)
    np.testing.assert_array_equal(a.matrix, b.matrix)


def test_empty_update_is_a_no_op() -> None:
    cm = ConfusionMatrix(3).update(np.zeros((0,), np.uint8), np.zeros((0,), np.uint8))
    assert cm.total == 0


def test_merge_add_and_iadd() -> None:
    rng = np.random.default_rng(2)
    parts = [(rng.integers(0, 4, 50), rng.integers(0, 4, 50)) for _ in range(3)]
    whole = ConfusionMatrix(4)
    for p, g in parts:
        whole.update(p, g)
    ms = [ConfusionMatrix(4).update(p, g) for p, g in parts]
    merged = ConfusionMatrix(4).merge(*ms)
    assert merged == whole
    s = ms[0] + ms[1]
    s += ms[2]
    assert s == whole
    assert ms[0].total == 50  # + does not modify its operands
    with pytest.raises(ValueError, match="cannot merge matrices of 4 and 5 classes"):
        whole.merge(ConfusionMatrix(5))


def test_reset() -> None:
    cm = ConfusionMatrix(2).update(np.array([0, 1]), np.array([1, 1]))
    cm.reset()
    assert cm.total == 0


def test_save_load_round_trip(tmp_path) -> None:
    cm = ConfusionMatrix.for_ontology("rellis3d-raw")
    gt = np.array([0, 1, 3, 34, 34, 7], dtype=np.uint8)
    pred = np.array([1, 1, 3, 33, 34, 7], dtype=np.uint8)
    cm.update(pred, gt)
    path = cm.save(tmp_path / "cm.npz")
    back = ConfusionMatrix.load(path)
    assert back == cm
    assert back.ontology_name == "rellis3d-raw"
    assert back.class_names[34] == "rubble" and back.class_names[2] is None
    assert back.ignore_ids == (0,)
    assert back.valid.tolist() == cm.valid.tolist()
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_load_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="file not found"):
        ConfusionMatrix.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(DataError, match="not a terraseg confusion matrix file"):
        ConfusionMatrix.load(bad)


def test_for_ontology_uses_ontology_ignore_ids_and_names() -> None:
    cm = ConfusionMatrix.for_ontology("semantickitti", extra_ignore=[255])
    assert cm.num_classes == 20
    assert cm.ignore_ids == (0, 255)
    assert cm.class_names[1] == "car"
    goose = ConfusionMatrix.for_ontology("goose")
    assert goose.ignore_ids == ()  # GOOSE counts class 0


# --------------------------------------------------------------------------- torch
def test_torch_path_matches_numpy_and_accumulates_with_it() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 10, size=(4, 32, 32)).astype(np.uint8)
    pred = rng.integers(0, 10, size=(4, 32, 32)).astype(np.uint8)
    gt[0, :4] = 255
    ref = ConfusionMatrix(10, ignore_ids=[255]).update(pred, gt)
    t = ConfusionMatrix(10, ignore_ids=[255]).update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert t == ref
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), 10).permute(0, 3, 1, 2).float()
    t.update(logits, torch.from_numpy(gt))  # logits on the torch path
    t.update(pred, gt)  # numpy update on the same object
    np.testing.assert_array_equal(t.matrix, 3 * ref.matrix)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_device_path_matches_numpy(dtype: torch.dtype) -> None:
    """The on-device path (used for GPU tensors) gives the numpy result; exercised here on CPU."""
    rng = np.random.default_rng(6)
    gt = rng.integers(0, 12, size=(3, 40, 40)).astype(np.uint8)
    pred = rng.integers(0, 12, size=(3, 40, 40)).astype(np.uint8)
    gt[:, 0] = 255
    ref = ConfusionMatrix(12, ignore_ids=[255], valid_ids=range(12)).update(pred, gt)
    cm = ConfusionMatrix(12, ignore_ids=[255])
    cm._update_torch(torch.from_numpy(pred).to(dtype), torch.from_numpy(gt).to(dtype))
    cm._update_torch(torch.from_numpy(pred).to(dtype), torch.from_numpy(gt).to(dtype))
    np.testing.assert_array_equal(cm.matrix, 2 * ref.matrix)
    with pytest.raises(DataError, match="1 predicted values"):
        cm._update_torch(torch.tensor([0, 13]).to(dtype), torch.tensor([0, 1]).to(dtype))
    if dtype == torch.int64:  # negative and huge ids take the clamped path
        with pytest.raises(DataError, match="2 ground-truth values"):
            cm._update_torch(torch.tensor([0, 1, 2]), torch.tensor([-4, 1, 99999]))


def test_torch_path_validates_ids() -> None:
    cm = ConfusionMatrix(4)
    with pytest.raises(DataError, match="1 predicted values"):
        cm.update(torch.tensor([0, 1, 9]), torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="1 ground-truth values"):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, -5, 2]))


@settings(max_examples=60, deadline=None)
@given(
    c=st.integers(1, 12),
    data=st.data(),
)
def test_matches_torchmetrics_and_brute_force(c: int, data: st.DataObject) -> None:
    from torchmetrics.classification import MulticlassConfusionMatrix

    n = data.draw(st.integers(1, 300))
    gt = data.draw(arrays(np.int64, n, elements=st.integers(0, c - 1)))
    pred = data.draw(arrays(np.int64, n, elements=st.integers(0, c - 1)))
    ignore = data.draw(st.sampled_from([None, 0, c - 1]))
    ign = () if ignore is None else (ignore,)
    ours = ConfusionMatrix(c, ignore_ids=ign).update(pred.astype(np.uint8), gt.astype(np.uint8))
    np.testing.assert_array_equal(ours.matrix, brute_force(pred, gt, c, ign))
    if c >= 2:
        tm = MulticlassConfusionMatrix(num_classes=c, ignore_index=ignore)
        tm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        np.testing.assert_array_equal(ours.matrix, tm.compute().numpy())


# --------------------------------------------------------------------------- distributed
def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(100 + rank)
        cm = ConfusionMatrix(5)
        cm.update(rng.integers(0, 5, 1000), rng.integers(0, 5, 1000))
        cm.save(f"{out_dir}/local{rank}.npz")
        cm.all_reduce()
        cm.save(f"{out_dir}/reduced{rank}.npz")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_across_processes(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    local = [ConfusionMatrix.load(tmp_path / f"local{r}.npz") for r in range(2)]
    reduced = [ConfusionMatrix.load(tmp_path / f"reduced{r}.npz") for r in range(2)]
    expected = local[0].matrix + local[1].matrix
    assert local[0] != local[1]
    for r in reduced:
        np.testing.assert_array_equal(r.matrix, expected)


def test_all_reduce_without_distributed_is_a_no_op() -> None:
    cm = ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 2]))
    before = cm.matrix
    np.testing.assert_array_equal(cm.all_reduce().matrix, before)
