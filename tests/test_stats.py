"""Streaming class statistics and class weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from terraseg.datasets import Frame
from terraseg.datasets.stats import ClassStats, load_class_weights, plot_class_frequencies, save_class_stats
from terraseg.errors import DataError
from terraseg.ontology import get_ontology


def _stats() -> ClassStats:
    s = ClassStats(get_ontology("rellis3d"))
    # frame 1: 6 grass (2), 2 tree (3), 2 void (0, ignored)
    s.update_labels(np.array([2] * 6 + [3] * 2 + [0] * 2, np.uint8), "train")
    # frame 2: 4 grass, 4 sky (6)
    s.update_labels(np.array([2] * 4 + [6] * 4, np.uint8), "train")
    s.update_labels(None, "test")
    return s


def test_frequencies_ignore_void_and_sum_to_one() -> None:
    s = _stats()
    f = s.frequencies()
    assert f[0] == 0
    assert f[2] == pytest.approx(10 / 16) and f[3] == pytest.approx(2 / 16) and f[6] == pytest.approx(4 / 16)
    assert f.sum() == pytest.approx(1.0)
    assert s.total().frames == 3 and s.total().labelled_frames == 2
    assert s.total("test").frames == 1


def test_enet_weights_by_hand() -> None:
    s = _stats()
    w = s.class_weights("enet", normalize=False)
    assert w[2] == pytest.approx(1 / np.log(1.02 + 10 / 16))
    assert w[3] == pytest.approx(1 / np.log(1.02 + 2 / 16))
    assert w[0] == 0 and w[5] == 0  # ignored and never seen
    wn = s.class_weights("enet")
    assert wn[[2, 3, 6]].mean() == pytest.approx(1.0)
    assert wn[3] > wn[6] > wn[2]  # rarer classes weigh more


def test_median_frequency_and_inv_sqrt_by_hand() -> None:
    s = _stats()
    # g = count / elements of frames containing the class: grass 10/18, tree 2/10, sky 4/8
    g = np.array([10 / 18, 2 / 10, 4 / 8])
    w = s.class_weights("median", normalize=False)
    np.testing.assert_allclose(w[[2, 3, 6]], np.median(g) / g)
    wi = s.class_weights("inv_sqrt", normalize=False)
    assert wi[3] == pytest.approx(1 / np.sqrt(2 / 16))


def test_rarest_and_never_seen() -> None:
    s = _stats()
    assert s.rarest(2) == [("tree", pytest.approx(2 / 16)), ("sky", pytest.approx(4 / 16))]
    never = s.never_seen()
    assert "dirt" in never and "grass" not in never and "void" not in never


def test_bad_ids_are_reported_with_the_source() -> None:
    s = ClassStats(get_ontology("rellis3d-raw"))
    with pytest.raises(DataError, match=r"f\.png: 1 values are not ids of ontology 'rellis3d-raw': 2 \(1x\)"):
        s.update_labels(np.array([0, 1, 2], np.uint8), source="f.png")
    with pytest.raises(DataError, match="99"):
        s.update_labels(np.array([0, 99], np.uint8), source="g.png")


def test_frame_update_and_points_modality() -> None:
    s = ClassStats(get_ontology("semantickitti"), modality="points")
    s.update(Frame("a", point_labels=np.array([1, 1, 9], np.uint16)))
    assert s.total().counts[1] == 2


def test_save_load_weights_and_plot(tmp_path) -> None:
    s = _stats()
    path = save_class_stats(s, tmp_path / "stats.json")
    data = json.loads(path.read_text())
    assert data["counts"]["grass"] == 10 and data["splits"]["train"]["frames"] == 2
    w = load_class_weights(path, "enet", "rellis3d")
    np.testing.assert_allclose(w, s.class_weights("enet"), rtol=1e-5)
    with pytest.raises(DataError, match="not 'goose'"):
        load_class_weights(path, "enet", "goose")
    with pytest.raises(DataError, match="no weights for method 'x'"):
        load_class_weights(path, "x")  # type: ignore[arg-type]
    png = plot_class_frequencies(s, tmp_path / "freq.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
