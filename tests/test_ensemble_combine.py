"""N-model score averaging (probabilities / logits) and majority vote, on arrays, files and predictors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import terraseg.ensemble.combine as combine
from terraseg.ensemble import (
    average_folders,
    average_labels,
    average_predictors,
    average_scores,
    majority_vote,
    read_scores,
    vote_folders,
    vote_predictors,
)
from terraseg.errors import ConfigError, DataError
from terraseg.io.labels import read_label_png, write_label_png
from terraseg.io.scans import read_label, write_label


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def logits(seed: int, shape: tuple[int, ...] = (5, 6, 7)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)


def test_average_prob_and_logit_modes() -> None:
    l1, l2 = logits(0), logits(1)
    p1, p2 = softmax(l1), softmax(l2)
    w = [3.0, 1.0]
    np.testing.assert_allclose(average_scores([p1, p2], w), 0.75 * p1 + 0.25 * p2, rtol=1e-6)
    # logit inputs are softmaxed first in prob mode; mixed kinds are fine
    np.testing.assert_allclose(average_scores([l1, p2], w, kinds=["logits", "probs"]), 0.75 * p1 + 0.25 * p2,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(average_scores([l1, l2], w, kinds="logits", mode="logit"), 0.75 * l1 + 0.25 * l2,
                               rtol=1e-6)
    # probabilities become log-probabilities in logit mode: same argmax as mean logits
    lab = average_labels([p1, p2], w, mode="logit")
    assert lab.dtype == np.uint8 and lab.shape == (6, 7)
    np.testing.assert_array_equal(lab, (0.75 * l1 + 0.25 * l2).argmax(axis=0))
    np.testing.assert_array_equal(average_labels([p1, p2]), (p1 + p2).argmax(axis=0))


def test_banded_processing_matches_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    ps = [softmax(logits(k, (4, 9, 5))) for k in range(3)]
    whole = average_labels(ps, [1, 2, 3])
    monkeypatch.setattr(combine, "_BAND_ELEMENTS", 7)  # one row per band
    assert len(combine._bands((4, 9, 5))) == 9
    np.testing.assert_array_equal(average_labels(ps, [1, 2, 3]), whole)


def test_average_errors() -> None:
    p = softmax(logits(0))
    with pytest.raises(DataError, match=r"score arrays differ in shape: model 1 \(5, 6, 7\), model 2 \(5, 6, 6\)"):
        average_scores([p, p[:, :, :6]])
    with pytest.raises(DataError, match="model 2: scores must be a float array"):
        average_scores([p, p.astype(np.int32)])
    with pytest.raises(ConfigError, match="1 weight"):
        average_scores([p, p], [1.0])
    with pytest.raises(ConfigError, match="non-negative"):
        average_scores([p, p], [1.0, -1.0])
    with pytest.raises(ConfigError, match="unknown averaging mode"):
        average_labels([p], mode="median")  # type: ignore[arg-type]


def test_majority_vote() -> None:
    a = np.array([1, 1, 2, 3, 5], np.uint8)
    b = np.array([1, 2, 2, 4, 6], np.uint8)
    c = np.array([2, 2, 3, 5, 7], np.uint8)
    np.testing.assert_array_equal(majority_vote([a, b, c]), [1, 2, 2, 3, 5])  # 3-way ties -> model 1
    np.testing.assert_array_equal(majority_vote([a, b, c], [1, 1, 3]), c)  # c outweighs a + b
    np.testing.assert_array_equal(majority_vote([a, b, c], [3, 1, 1.5]), [1, 1, 2, 3, 5])
    out = majority_vote([a.astype(np.uint16), b])
    assert out.dtype == np.uint16 and out.tolist() == a.tolist()  # 2-way tie -> model 1
    with pytest.raises(DataError, match="label arrays differ in shape"):
        majority_vote([a, b[:3]])
    with pytest.raises(DataError, match="model 2: labels must have an integer dtype"):
        majority_vote([a, b.astype(float)])


class FakeModel:
    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        assert image.shape == (6, 7, 3)
        return self.probs

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.probabilities(image).argmax(axis=0).astype(np.uint8)


def test_on_the_fly_predictors() -> None:
    ps = [softmax(logits(k)) for k in range(3)]
    models = [FakeModel(p) for p in ps]
    img = np.zeros((6, 7, 3), np.uint8)
    np.testing.assert_array_equal(average_predictors(models, img, [1, 2, 1]), (ps[0] + 2 * ps[1] + ps[2]).argmax(0))
    np.testing.assert_array_equal(vote_predictors(models, img), majority_vote([m.predict(img) for m in models]))


def test_read_scores(tmp_path: Path) -> None:
    p = softmax(logits(0)).astype(np.float16)
    np.save(tmp_path / "a.npy", p)
    arr, kind = read_scores(tmp_path / "a.npy")
    assert kind == "probs" and isinstance(arr, np.memmap) and arr.dtype == np.float16
    assert read_scores(tmp_path / "a.npy", "logits")[1] == "logits"
    np.savez(tmp_path / "b.npz", logits=logits(1))
    assert read_scores(tmp_path / "b.npz")[1] == "logits"
    np.savez(tmp_path / "c.npz", scores=p)
    with pytest.raises(DataError, match=r"c.npz: expected exactly one array named 'probs' or 'logits', found \['scores'\]"):
        read_scores(tmp_path / "c.npz")
    np.save(tmp_path / "d.npy", np.zeros((3, 4), np.int64))
    with pytest.raises(DataError, match="d.npy: scores must be a float array"):
        read_scores(tmp_path / "d.npy")
    (tmp_path / "e.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="e.npy: unreadable score file"):
        read_scores(tmp_path / "e.npy")


def test_average_folders(tmp_path: Path) -> None:
    l1, l2 = logits(0, (64, 6, 7)), logits(1, (64, 6, 7))
    for d in ("a", "b", "c", "d"):
        (tmp_path / d).mkdir()
    for k in range(2):
        np.save(tmp_path / "a" / f"s{k}.npy", softmax(l1 + k))
        np.savez_compressed(tmp_path / "b" / f"s{k}.npz", logits=l2 + k)
        np.save(tmp_path / "c" / f"s{k}.npy", l1 + k)
    s = average_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", weights=[1, 3], ontology="goose")
    assert s.frames == 2 and s.method == "average-prob" and s.weights == [0.25, 0.75]
    ids = read_label_png(tmp_path / "out" / "s0.png")
    np.testing.assert_array_equal(ids, (0.25 * softmax(l1) + 0.75 * softmax(l2)).argmax(axis=0))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["weights"] == [0.25, 0.75]
    # logit mode with .npy files that hold logits
    s2 = average_folders([tmp_path / "c", tmp_path / "b"], tmp_path / "out2", kinds="logits", mode="logit")
    np.testing.assert_array_equal(read_label_png(tmp_path / "out2" / "s0.png"), (l1 + l2).argmax(axis=0))
    assert s2.method == "average-logit"
    (tmp_path / "a" / "s1.npy").unlink()
    with pytest.raises(DataError, match=r"score folders do not hold the same frames: .*a lacks 1 stem\(s\), e.g. s1"):
        average_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out3")
    np.save(tmp_path / "d" / "s0.npy", softmax(logits(2, (70, 3, 3)) * 0 + np.arange(70)[:, None, None]))
    with pytest.raises(DataError, match="values are not ids of ontology 'goose'"):
        average_folders([tmp_path / "d"], tmp_path / "out4", ontology="goose")
    assert not (tmp_path / "out4" / "s0.png").exists()


@pytest.mark.parametrize("kind", ["png", "label"])
def test_vote_folders(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(3)
    arrs = [rng.integers(0, 4, (5, 6)).astype(np.uint8) for _ in range(3)]
    for k, a in enumerate(arrs):
        if kind == "png":
            write_label_png(tmp_path / f"m{k}" / "x.png", a)
        else:
            write_label(tmp_path / f"m{k}" / "x.label", a.ravel())
    s = vote_folders([tmp_path / f"m{k}" for k in range(3)], tmp_path / "out", weights=[1, 1, 1])
    expected = majority_vote(arrs)
    got = read_label_png(tmp_path / "out" / "x.png") if kind == "png" else read_label(tmp_path / "out" / "x.label")[0]
    np.testing.assert_array_equal(got.ravel(), expected.ravel())
    assert s.frames == 1 and s.method == "vote"
    with pytest.raises(DataError, match="output folder must differ"):
        vote_folders([tmp_path / "m0", tmp_path / "m1"], tmp_path / "m0")
