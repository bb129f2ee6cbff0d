"""The pair histogram H[m1, m2, gt]: counts against brute force, ids, files, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terraseg.ensemble import (
    HistogramAccumulator,
    PairHistogram,
    assign_groups,
    build_histogram,
    histogram_arrays,
    histogram_from_arrays,
    numba_available,
)
from terraseg.errors import ConfigError, DataError
from terraseg.io.labels import write_label_png
from terraseg.io.scans import write_label

BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="no numba"))]


def brute(m1: np.ndarray, m2: np.ndarray, gt: np.ndarray, c: int, ignore: tuple[int, ...] = ()) -> np.ndarray:
    h = np.zeros((c, c, c), dtype=np.int64)
    for a, b, g in zip(m1.ravel().tolist(), m2.ravel().tolist(), gt.ravel().tolist()):
        if g in ignore:
            continue
        h[a, b, g] += 1
    return h


def triple(rng: np.random.Generator, shape: tuple[int, ...], c: int, dtype: type = np.uint8) -> tuple[np.ndarray, ...]:
    gt = rng.integers(0, c, shape).astype(dtype)
    m1 = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, c, shape)).astype(dtype)
    m2 = np.where(rng.random(shape) < 0.6, m1, rng.integers(0, c, shape)).astype(dtype)
    return m1, m2, gt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_matches_brute_force(backend: str, dtype: type) -> None:
    rng = np.random.default_rng(1)
    m1, m2, gt = triple(rng, (37, 29), 7, dtype)
    gt[0, :5] = 255 if dtype != np.int64 else 9  # ignored
    h = histogram_arrays(m1, m2, gt, 7, ignore_ids=[255, 9], backend=backend)  # type: ignore[arg-type]
    assert h.dtype == np.int64 and h.shape == (7, 7, 7)
    np.testing.assert_array_equal(h, brute(m1, m2, gt, 7, (255, 9)))
    assert h.sum() == m1.size - 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_and_many_frames_accumulate(backend: str) -> None:
    rng = np.random.default_rng(2)
    acc = HistogramAccumulator(np.arange(5), backend=backend, threads=2)  # type: ignore[arg-type]
    ref = np.zeros((5, 5, 5), dtype=np.int64)
    for shape in [(300, 400), (7,), (0,), (1 << 17,)]:  # big enough to use both threads, and empty
        m1, m2, gt = triple(rng, shape, 5)
        acc.add(m1, m2, gt)
        ref += np.bincount(((m1.astype(np.int64) * 5 + m2) * 5 + gt).ravel(), minlength=125).reshape(5, 5, 5)
    np.testing.assert_array_equal(acc.counts(), ref)
    assert acc.frames == 4
    acc.reset()
    assert acc.counts().sum() == 0 and acc.frames == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_ids_name_the_source_and_count_nothing(backend: str) -> None:
    rng = np.random.default_rng(3)
    m1, m2, gt = triple(rng, (20, 20), 4)
    acc = HistogramAccumulator(np.arange(4), ignore_ids=[255], backend=backend)  # type: ignore[arg-type]
    acc.add(m1, m2, gt)
    before = acc.counts()
    bad = m2.copy()
    bad[3, 3] = 9
    with pytest.raises(DataError, match=r"a\.png / b\.png: 1 model-2 predictions are not class ids \(ids 9\)"):
        acc.add(m1, bad, gt, source="a.png / b.png")
    g = gt.copy()
    g[0, 0] = 7
    with pytest.raises(DataError, match=r"1 ground-truth values are neither class ids nor ignored \(ids 7; ignored: \[255\]\)"):
        acc.add(m1, m2, g, source="x")
    # a bad prediction under an ignored ground truth is not counted, so it is no error (as ConfusionMatrix)
    g2 = gt.copy()
    g2[3, 3] = 255
    acc.add(m1, bad, g2)
    np.testing.assert_array_equal(acc.counts(), before + brute(m1, bad, g2, 4, (255,)))
    assert acc.frames == 2
    with pytest.raises(DataError, match="shapes differ"):
        acc.add(m1, m2[:-1], gt)
    with pytest.raises(DataError, match="integer dtype"):
        acc.add(m1.astype(np.float32), m2, gt)


def test_sparse_ontology_ids_are_compacted() -> None:
    """rellis3d-raw: 20 classes with ids up to 34; void (0) is ignored in the ground truth."""
    from terraseg.ontology import get_ontology

    onto = get_ontology("rellis3d-raw")
    ids = onto.ids
    rng = np.random.default_rng(4)
    k = rng.integers(0, len(ids), (3, 50, 60))
    m1, m2, gt = (ids[x].astype(np.uint8) for x in k)
    h = histogram_from_arrays([(m1, m2, gt)], "rellis3d-raw")
    assert h.counts.shape == (20, 20, 20) and h.class_names == onto.names
    np.testing.assert_array_equal(h.class_ids, ids)
    assert h.ignore_ids == (0, 255)
    ref = brute(k[0], k[1], k[2], 20, ())
    ref[:, :, 0] = 0  # ground truth void is ignored
    np.testing.assert_array_equal(h.counts, ref)
    assert not h.scored[0] and h.scored[1:].all()
    with pytest.raises(DataError, match="model-1 predictions are not class ids \\(ids 2\\)"):
        histogram_from_arrays([(np.full((2, 2), 2, np.uint8), m2[:2, :2], np.ones((2, 2), np.uint8))], "rellis3d-raw")


def test_marginals_agreement_and_confusion() -> None:
    rng = np.random.default_rng(5)
    m1, m2, gt = triple(rng, (30, 30), 4)
    h = PairHistogram(histogram_arrays(m1, m2, gt, 4), ["a", "b", "c", "d"], frames=1)
    from terraseg.metrics import ConfusionMatrix

    np.testing.assert_array_equal(h.confusion(1), ConfusionMatrix(4).update(m1, gt).matrix)
    np.testing.assert_array_equal(h.confusion(2), ConfusionMatrix(4).update(m2, gt).matrix)
    same = m1 == m2
    np.testing.assert_array_equal(h.agreement(), ConfusionMatrix(4).update(m1[same], gt[same]).matrix)
    assert h.agreement_rate() == pytest.approx(same.mean())
    np.testing.assert_array_equal(h.group_sizes(), np.bincount(m1.ravel() * 4 + m2.ravel(), minlength=16).reshape(4, 4))
    with pytest.raises(ValueError):
        h.confusion(3)


def test_add_save_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a = histogram_from_arrays([triple(rng, (10, 10), 64)], "goose")
    b = histogram_from_arrays([triple(rng, (10, 10), 64)] * 2, "goose")
    s = a + b
    assert s.frames == 3 and s.total == 300 and sum([a, b]).total == 300
    np.testing.assert_array_equal(PairHistogram.sum([a, b]).counts, a.counts + b.counts)
    p = s.save(tmp_path / "h.npz")
    r = PairHistogram.load(p)
    np.testing.assert_array_equal(r.counts, s.counts)
    assert (r.class_names, r.ontology, r.frames, r.ignore_ids) == (s.class_names, "goose", 3, (255,))
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.npz: not a terraseg pair histogram"):
        PairHistogram.load(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="missing.npz: pair histogram file not found"):
        PairHistogram.load(tmp_path / "missing.npz")
    other = histogram_from_arrays([triple(rng, (4, 4), 20)], "rellis3d")
    with pytest.raises(DataError, match="different classes"):
        _ = a + other


def test_assign_groups() -> None:
    assert assign_groups(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert assign_groups(7, 3, "block").tolist() == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError):
        assign_groups(4, 0)
    with pytest.raises(ConfigError, match="unknown split scheme"):
        assign_groups(4, 2, "random")  # type: ignore[arg-type]


def _write_frames(root: Path, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], kind: str = "png") -> None:
    for k, (m1, m2, gt) in enumerate(frames):
        for d, arr, suffix in (("m1", m1, ""), ("m2", m2, ""), ("gt", gt, "_labelids")):
            if kind == "png":
                write_label_png(root / d / "seq" / f"f{k:02d}{suffix}.png", arr)
            else:
                write_label(root / d / f"f{k:02d}{suffix}.label", arr.ravel())


@pytest.mark.parametrize("kind", ["png", "label"])
def test_build_histogram_from_folders_with_folds(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(7)
    frames = [triple(rng, (12, 16), 64) for _ in range(5)]
    _write_frames(tmp_path, frames, kind)
    hs = build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", gt_suffix="_labelids", folds=2)
    assert len(hs) == 2 and [h.frames for h in hs] == [3, 2]
    for f, h in enumerate(hs):
        ref = sum(brute(*frames[k], 64) for k in range(5) if k % 2 == f)
        np.testing.assert_array_equal(h.counts, ref)
    stem = "seq/f00" if kind == "png" else "f00"
    assert hs[0].stems[0] == stem and hs[0].ontology == "goose"
    (one,) = build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", gt_suffix="_labelids",
                             kind=kind, backend="numpy")  # type: ignore[arg-type]
    np.testing.assert_array_equal(one.counts, hs[0].counts + hs[1].counts)


def test_folder_errors_name_the_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    _write_frames(tmp_path, [triple(rng, (6, 6), 64) for _ in range(3)])
    (tmp_path / "m2" / "seq" / "f01.png").unlink()
    with pytest.raises(DataError, match=r"model-2 folder .*m2 lacks 1 stem\(s\) present elsewhere: seq/f01"):
        build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", gt_suffix="_labelids")
    write_label_png(tmp_path / "m2" / "seq" / "f01.png", np.zeros((6, 7), np.uint8))
    with pytest.raises(DataError, match=r"sizes differ: .*m1/seq/f01.png is 6x6, .*m2/seq/f01.png is 7x6, "
                                        r".*gt/seq/f01_labelids.png is 6x6"):
        build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", gt_suffix="_labelids")
    write_label_png(tmp_path / "m2" / "seq" / "f01.png", np.full((6, 6), 70, np.uint8))
    with pytest.raises(DataError, match=r"m1/seq/f01.png / .*m2/seq/f01.png against .*f01_labelids.png: "
                                        r"36 model-2 predictions are not class ids \(ids 70\)"):
        build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", gt_suffix="_labelids")
    with pytest.raises(DataError, match="nowhere: ground-truth folder not found"):
        build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "nowhere", "goose")
    with pytest.raises(DataError, match=r"no ground-truth files \(.png ending in _x\)"):
        build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", gt_suffix="_x", kind="png")


def test_class_limit() -> None:
    with pytest.raises(ConfigError, match="at most 256 classes"):
        HistogramAccumulator(np.arange(300))
