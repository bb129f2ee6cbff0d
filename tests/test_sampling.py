"""Repeat-factor sampling: class presence, hand-computed factors, the sampler's epochs and DDP split."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Frame
from terraseg.training.sampling import RepeatFactorSampler, class_presence, repeat_factors


def _frame(i: int, ids: list[int], dtype: type = np.uint8) -> Frame:
    labels = np.zeros((4, 6), dtype=dtype)
    labels.ravel()[: len(ids)] = ids
    labels.ravel()[len(ids):] = ids[0] if ids else 0
    return Frame(frame_id=f"f{i}", image_labels=labels)


def test_class_presence_counts_each_frame() -> None:
    frames = [_frame(0, [0, 2]), _frame(1, [1]), _frame(2, [3, 3, 255]), _frame(3, [0, 1, 2, 3], np.uint16)]
    p = class_presence(frames, 4, ignore_ids=[255])
    assert p.dtype == bool and p.shape == (4, 4)
    np.testing.assert_array_equal(p, [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    # an ignore id inside the class range is not counted
    np.testing.assert_array_equal(class_presence(frames, 4, ignore_ids=[255, 0])[:, 0], [0, 0, 0, 0])


def test_class_presence_errors_name_the_frame() -> None:
    with pytest.raises(DataError, match=r"frame 1 \(f1\): label id 255 is not a class \(num_classes=4\)"):
        class_presence([_frame(0, [1]), _frame(1, [1, 255])], 4)
    with pytest.raises(DataError, match=r"frame 0 \(nolabels\): no image labels"):
        class_presence([Frame(frame_id="nolabels")], 4)
    with pytest.raises(ConfigError, match="num_classes"):
        class_presence([], 0)
    assert class_presence([], 3).shape == (0, 3)


def test_repeat_factors_hand_computed() -> None:
    # 10 images, 4 classes: c0 in all 10, c1 in 1, c2 in 2, c3 in none
    p = np.zeros((10, 4), dtype=bool)
    p[:, 0] = True
    p[0, 1] = True
    p[[0, 1], 2] = True
    p[9, 0] = False  # image 9 contains nothing -> factor 1
    t = 0.4
    # f0 = 0.9 -> r0 = max(1, sqrt(0.4/0.9)) = 1; f1 = 0.1 -> r1 = 2; f2 = 0.2 -> r2 = sqrt(2)
    expected = np.array([2.0, math.sqrt(2.0)] + [1.0] * 8)
    np.testing.assert_allclose(repeat_factors(p, t), expected)
    # the LVIS default threshold: only classes in < 10 % of the images are boosted
    np.testing.assert_allclose(repeat_factors(p, 0.1), np.ones(10))
    assert repeat_factors(np.zeros((0, 3), bool)).shape == (0,)
    np.testing.assert_allclose(repeat_factors(np.zeros((3, 0), bool)), np.ones(3))


def test_repeat_factors_errors() -> None:
    with pytest.raises(DataError, match=r"\(N, K\)"):
        repeat_factors(np.zeros(5, bool))
    with pytest.raises(ConfigError, match="threshold"):
        repeat_factors(np.zeros((2, 2), bool), threshold=0)


def test_sampler_repeats_each_index_floor_or_ceil_times() -> None:
    factors = np.array([1.0, 2.5, 0.0, 1.2, 3.0])
    s = RepeatFactorSampler(factors, seed=0)
    for epoch in range(20):
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == len(s)
        c = Counter(idx)
        assert c[0] == 1 and c[1] in (2, 3) and c[2] == 0 and c[3] in (1, 2) and c[4] == 3


def test_sampler_is_unbiased_over_epochs() -> None:
    factors = np.array([1.0, 1.25, 2.5, 0.4])
    s = RepeatFactorSampler(factors, seed=5)
    total = np.zeros(4)
    epochs = 4000
    for e in range(epochs):
        total += np.bincount(s.epoch_indices(e), minlength=4)
    np.testing.assert_allclose(total / epochs, factors, atol=0.04)
    assert s.expected_length == pytest.approx(factors.sum())


def test_sampler_determinism_and_shuffle() -> None:
    factors = np.full(50, 1.5)
    a, b = RepeatFactorSampler(factors, seed=1), RepeatFactorSampler(factors, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and list(a) == list(a)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(RepeatFactorSampler(factors, seed=2)) != list(RepeatFactorSampler(factors, seed=1))
    ordered = list(RepeatFactorSampler(factors, seed=1, shuffle=False))
    assert ordered == sorted(ordered) and ordered != list(RepeatFactorSampler(factors, seed=1))


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_sampler_rank_split(replicas: int) -> None:
    factors = np.array([1.0, 2.3, 1.7, 1.0, 0.5, 3.1, 1.0])
    samplers = [RepeatFactorSampler(factors, seed=9, num_replicas=replicas, rank=r) for r in range(replicas)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [list(s) for s in samplers]
        assert len({len(p) for p in parts}) == 1  # equal lengths on every rank
        assert all(len(p) == len(s) for p, s in zip(parts, samplers))
        whole = RepeatFactorSampler(factors, seed=9)
        whole.set_epoch(epoch)
        ref = list(whole)
        merged = [p[i] for i in range(len(parts[0])) for p in parts]  # interleave back
        pad = len(merged) - len(ref)
        assert 0 <= pad < replicas
        assert merged[: len(ref)] == ref and merged[len(ref):] == ref[:pad]  # padded by wrap-around


def test_sampler_in_a_dataloader() -> None:
    data = torch.arange(6)
    s = RepeatFactorSampler(np.array([1, 1, 1, 1, 2.0, 3.0]), seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=s)
    got = torch.cat(list(loader)).tolist()
    assert len(got) == len(s) == 9
    assert Counter(got) == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 3})


def test_sampler_argument_errors() -> None:
    with pytest.raises(ConfigError, match="factor 1 is -1"):
        RepeatFactorSampler(np.array([1.0, -1.0]))
    with pytest.raises(ConfigError, match="finite"):
        RepeatFactorSampler(np.array([np.nan]))
    with pytest.raises(ConfigError, match="1-D"):
        RepeatFactorSampler(np.ones((2, 2)))
    with pytest.raises(ConfigError, match=r"rank must be in 0\.\.1"):
        RepeatFactorSampler(np.ones(3), num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="num_replicas"):
        RepeatFactorSampler(np.ones(3), num_replicas=0)
    assert len(RepeatFactorSampler(np.zeros(4), num_replicas=2)) == 0


def test_end_to_end_rare_class_is_oversampled() -> None:
    frames = [_frame(i, [0]) for i in range(19)] + [_frame(19, [0, 1])]
    factors = repeat_factors(class_presence(frames, 2), threshold=0.2)
    np.testing.assert_allclose(factors[19], 2.0)  # f1 = 0.05 -> sqrt(0.2 / 0.05) = 2
    s = RepeatFactorSampler(factors)
    assert Counter(s)[19] == 2 and len(s) == 21
