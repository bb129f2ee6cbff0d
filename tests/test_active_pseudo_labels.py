"""Pseudo-labels: the min(class median, 0.9) rule over the whole set, per modality, files and summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from terraseg.active import (
    ClassConfidences,
    PseudoLabels,
    PseudoLabelSummary,
    lower_median,
    predict_modalities,
    read_pseudo_labels,
    refine_pseudo_labels,
    write_pseudo_labels,
)
from terraseg.errors import DataError


def probs_for(labels: list[int], conf: list[float], c: int = 3) -> np.ndarray:
    """(N, C) rows whose argmax is ``labels`` with maximum ``conf`` (the rest spread evenly)."""
    p = np.zeros((len(labels), c), dtype=np.float32)
    for i, (lab, cf) in enumerate(zip(labels, conf)):
        p[i] = (1 - cf) / (c - 1)
        p[i, lab] = cf
    return p


# hand example: class 0 over both frames has confidences 0.5, 0.7, 0.6, 0.8 -> lower median 0.6
# (the mean of the middle two would be 0.65); class 1: 0.95, 0.96, 0.97 -> median 0.96, capped
# at 0.9; class 2: 0.4 alone -> 0.4.
FRAME_A = ([0, 0, 1, 1, 2], [0.5, 0.7, 0.95, 0.96, 0.4])
FRAME_B = ([0, 0, 1], [0.6, 0.8, 0.97])


def test_lower_median_is_torch_median() -> None:
    assert lower_median(np.array([0.8, 0.2, 0.6, 0.4])) == pytest.approx(0.4)
    assert lower_median(np.array([0.3, 0.1, 0.2])) == pytest.approx(0.2)
    assert np.isnan(lower_median(np.array([])))
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 10, 101):
        v = rng.random(n).astype(np.float32)
        assert lower_median(v) == float(torch.tensor(v).median())


def test_thresholds_against_hand_computed_medians() -> None:
    acc = ClassConfidences(3)
    for lab, conf in (FRAME_A, FRAME_B):
        acc.add(np.array(lab), np.array(conf, dtype=np.float32))
    np.testing.assert_allclose(acc.medians(), [0.6, 0.96, 0.4], rtol=1e-6)
    np.testing.assert_allclose(acc.thresholds(), [0.6, 0.9, 0.4], rtol=1e-6)
    assert acc.counts().tolist() == [4, 3, 1]
    # set-wide, not per frame: frame A alone would give class 0 the median 0.5 and keep 0.5
    lab = np.array(FRAME_A[0] + FRAME_B[0])
    conf = np.array(FRAME_A[1] + FRAME_B[1], dtype=np.float32)
    keep, thr = refine_pseudo_labels(lab, conf, 3)
    assert keep.tolist() == [False, True, True, True, True, True, True, True]
    alone, _ = refine_pseudo_labels(np.array(FRAME_A[0]), np.array(FRAME_A[1], dtype=np.float32), 3)
    assert alone[0]  # per-frame thresholds would differ: the reference computes them over the set


def test_equal_to_threshold_is_kept_and_cap_applies() -> None:
    keep, thr = refine_pseudo_labels(np.array([0, 0, 0]), np.array([0.95, 0.9, 0.99], dtype=np.float32), 1)
    assert thr[0] == np.float32(0.9)  # median 0.95 capped at 0.9
    assert keep.tolist() == [True, True, True]  # 0.9 >= 0.9 in float32
    keep, thr = refine_pseudo_labels(np.array([0, 0, 0, 0]), np.array([0.2, 0.4, 0.4, 0.8], dtype=np.float32), 2)
    assert thr[0] == np.float32(0.4) and np.isnan(thr[1])
    assert keep.tolist() == [False, True, True, True]


def test_matches_xmuda_reference_rule_on_random_data() -> None:
    """Our streaming collection equals xMUDA's refine_pseudo_labels over the concatenation."""
    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 5, 300), rng.random(300).astype(np.float32)) for _ in range(4)]
    acc = ClassConfidences(5)
    for lab, conf in frames:
        acc.add(lab, conf)
    thr = acc.thresholds()
    lab = torch.tensor(np.concatenate([f[0] for f in frames]))
    probs = torch.tensor(np.concatenate([f[1] for f in frames]))
    ref = lab.clone()
    for c in lab.unique():  # the reference's loop, with torch semantics
        idx = (lab == c).nonzero().squeeze(1)
        t = min(probs[idx].median(), 0.9)
        ref[idx[probs[idx] < t]] = -100
    ours = np.concatenate([np.where(conf >= thr[lb], lb, -100) for lb, conf in frames])
    assert (ours == ref.numpy()).all()


def test_predict_modalities_ensemble() -> None:
    p2 = np.array([[0.6, 0.4], [0.2, 0.8]], dtype=np.float32)
    p3 = np.array([[0.3, 0.7], [0.1, 0.9]], dtype=np.float32)
    pred = predict_modalities(p2, p3)
    assert set(pred) == {"2d", "3d", "ensemble"}
    assert pred["2d"].label.tolist() == [0, 1] and pred["3d"].label.tolist() == [1, 1]
    assert pred["ensemble"].label.tolist() == [1, 1]  # (0.9, 1.1) and (0.3, 1.7)
    np.testing.assert_allclose(pred["ensemble"].confidence, [0.55, 0.85], rtol=1e-6)
    assert set(predict_modalities(probs_3d=p3)) == {"3d"}
    with pytest.raises(DataError, match="differ in shape"):
        predict_modalities(p2, p3[:1])


def test_write_and_read_back_per_frame_files(tmp_path) -> None:
    frames = [("seq0/a", probs_for(*FRAME_A), probs_for(*FRAME_A)),
              ("seq0/b", probs_for(*FRAME_B), probs_for([2, 2, 2], [0.5, 0.6, 0.7]))]
    s = write_pseudo_labels(iter(frames), tmp_path, num_classes=3)
    assert s.frames == ("seq0/a", "seq0/b")
    st = s.stats["2d"]
    np.testing.assert_allclose(st.median, [0.6, 0.96, 0.4], rtol=1e-6)
    assert st.predicted.tolist() == [4, 3, 1] and st.kept.tolist() == [3, 3, 1]
    assert s.stats["3d"].predicted.tolist() == [2, 2, 4]  # frame b's 3D says class 2 everywhere
    a = read_pseudo_labels(tmp_path, "seq0/a")
    assert (tmp_path / "seq0" / "a.npz").is_file()
    assert a.labels("2d").tolist() == [255, 0, 1, 1, 2]
    assert a.labels("2d", ignore_index=-100).tolist() == [-100, 0, 1, 1, 2]
    np.testing.assert_allclose(a.modalities["2d"].confidence, FRAME_A[1], rtol=1e-6)
    assert set(a.modalities) == {"2d", "3d", "ensemble"} and len(a) == 5
    # the summary on disk reads back equal
    back = PseudoLabelSummary.load(tmp_path)
    assert back.frames == s.frames and back.stats["ensemble"].kept.tolist() == s.stats["ensemble"].kept.tolist()
    d = json.loads((tmp_path / "summary.json").read_text())
    assert d["modalities"]["2d"]["kept"] == [3, 3, 1]


def test_unfinished_and_bad_files_give_one_clear_error(tmp_path) -> None:
    from terraseg.active.pseudo_labels import _save_npz

    pred = predict_modalities(probs_for(*FRAME_A))
    _save_npz(tmp_path / "x.npz", pred, None, 3, final=False)
    with pytest.raises(DataError, match="not finalised"):
        PseudoLabels.load(tmp_path / "x.npz")
    (tmp_path / "y.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="y.npz: not a readable pseudo-label file"):
        PseudoLabels.load(tmp_path / "y.npz")
    with pytest.raises(DataError, match="not found"):
        PseudoLabels.load(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="frame 'f' appears twice"):
        write_pseudo_labels([("f", probs_for(*FRAME_A), None)] * 2, tmp_path / "o", 3)
    with pytest.raises(DataError, match=r"frame g: .*NaN"):
        write_pseudo_labels([("g", np.full((2, 3), np.nan, dtype=np.float32), None)], tmp_path / "o2", 3)
    with pytest.raises(DataError, match="cannot be used as a file name"):
        write_pseudo_labels([("../evil", probs_for(*FRAME_A), None)], tmp_path / "o3", 3)
    empty = np.zeros((0, 3), dtype=np.float32)
    with pytest.raises(DataError, match="none of the 2 target frame.s. has a point in the camera's view"):
        write_pseudo_labels([("e1", empty, empty), ("e2", empty, empty)], tmp_path / "o4", 3)
    s = write_pseudo_labels([("e", empty, None), ("f", probs_for(*FRAME_A), None)], tmp_path / "o5", 3)
    assert len(read_pseudo_labels(tmp_path / "o5", "e")) == 0 and s.stats["2d"].kept.sum() == 5
    with pytest.raises(DataError, match="labels must be integers in"):
        ClassConfidences(2).add(np.array([0, 2]), np.array([0.5, 0.5]))
