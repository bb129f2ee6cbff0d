"""Copy-paste of rare-class instances: the bank, online pasting, the offline writer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from terraseg.datasets.generic import GenericDataset
from terraseg.errors import ConfigError, DataError
from terraseg.frame import Frame
from terraseg.training.copypaste import CopyPaste, Instance, InstanceBank, Paste, copy_paste_offline

IGN = 255
RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _frame(i: int, squares: list[tuple[int, int, int, int, int]], size: tuple[int, int] = (48, 64),
           instances: np.ndarray | None = None) -> Frame:
    """A frame with background class 0 (gray noise) and squares (class, top, left, h, w) in class colours."""
    rng = np.random.default_rng(100 + i)
    image = rng.integers(90, 110, (*size, 3), dtype=np.uint8)
    mask = np.zeros(size, dtype=np.uint8)
    colour = {5: RED, 6: BLUE, 7: GREEN}
    for c, y, x, h, w in squares:
        mask[y:y + h, x:x + w] = c
        image[y:y + h, x:x + w] = colour[c]
    return Frame(frame_id=f"seq/f{i:03d}", image=image, image_labels=mask, image_instances=instances)


def _dataset() -> list[Frame]:
    return [
        _frame(0, [(5, 4, 4, 10, 10), (5, 30, 40, 12, 8)]),   # two class-5 objects
        _frame(1, [(6, 10, 10, 9, 9)]),                       # one class-6 object
        _frame(2, [(5, 20, 20, 3, 3)]),                       # too small (9 px)
        _frame(3, []),                                        # background only
        _frame(4, [(6, 0, 50, 16, 14), (7, 30, 0, 10, 10)]),  # class 7 is not collected
    ]


# ---------------------------------------------------------------------------- bank
def test_bank_from_connected_components() -> None:
    bank = InstanceBank.from_dataset(_dataset(), [5, 6], min_pixels=16)
    assert len(bank) == 4 and bank.classes == [5, 6] and bank.counts == {5: 2, 6: 2}
    sizes = sorted((i.class_id, i.pixels, i.alpha.shape, i.source, i.source_index) for i in bank.instances)
    assert sizes == [(5, 96, (12, 8), "seq/f000", 0), (5, 100, (10, 10), "seq/f000", 0),
                     (6, 81, (9, 9), "seq/f001", 1), (6, 224, (16, 14), "seq/f004", 4)]
    for inst in bank.instances:
        assert inst.image.dtype == np.uint8 and inst.image.shape == (*inst.alpha.shape, 3)
        assert inst.alpha.dtype == bool
        colour = RED if inst.class_id == 5 else BLUE
        assert (inst.image[inst.alpha] == colour).all()
    assert repr(bank).startswith("InstanceBank(4 instances")


def test_bank_min_pixels_keeps_small_objects_when_asked() -> None:
    bank = InstanceBank.from_dataset(_dataset(), [5], min_pixels=9)
    assert bank.counts == {5: 3}


def test_bank_from_instance_masks_vs_components() -> None:
    """Two touching objects of one class: one component, but two instances with instance ids."""
    size = (40, 40)
    inst = np.zeros(size, dtype=np.uint16)
    inst[5:15, 5:15] = 7
    inst[5:15, 15:25] = 3
    # the third class-5 blob has no instance id: it falls back to a connected component
    frame = _frame(0, [(5, 5, 5, 10, 20), (5, 25, 25, 8, 8)], size=size, instances=inst)
    by_instance = InstanceBank.from_dataset([frame], [5], min_pixels=10)
    by_component = InstanceBank.from_dataset([frame], [5], min_pixels=10, use_instances=False)
    assert sorted(i.pixels for i in by_instance.instances) == [64, 100, 100]
    assert sorted(i.pixels for i in by_component.instances) == [64, 200]
    shapes = sorted(i.alpha.shape for i in by_instance.instances)
    assert shapes == [(8, 8), (10, 10), (10, 10)]


def test_instance_id_spanning_two_blobs_is_one_instance() -> None:
    size = (30, 30)
    inst = np.zeros(size, dtype=np.uint8)
    inst[2:8, 2:8] = 4
    inst[20:26, 20:26] = 4  # occluded object: two pieces, one id
    frame = _frame(0, [(6, 2, 2, 6, 6), (6, 20, 20, 6, 6)], size=size, instances=inst)
    bank = InstanceBank.from_dataset([frame], [6], min_pixels=10)
    assert len(bank) == 1 and bank.instances[0].pixels == 72 and bank.instances[0].alpha.shape == (24, 24)


def test_components_are_eight_connected() -> None:
    frame = _frame(0, [(5, 0, 0, 5, 5), (5, 5, 5, 5, 5)])  # touch only at a corner
    assert len(InstanceBank.from_dataset([frame], [5], min_pixels=1)) == 1


def test_max_per_class_is_a_seeded_uniform_subset() -> None:
    frames = [_frame(i, [(5, 2, 2, 6, 6)]) for i in range(30)]
    a = InstanceBank.from_dataset(frames, [5], min_pixels=4, max_per_class=5, seed=1)
    b = InstanceBank.from_dataset(frames, [5], min_pixels=4, max_per_class=5, seed=1)
    c = InstanceBank.from_dataset(frames, [5], min_pixels=4, max_per_class=5, seed=2)
    src = [i.source_index for i in a.instances]
    assert len(src) == 5 and len(set(src)) == 5
    assert src == [i.source_index for i in b.instances]
    assert src != [i.source_index for i in c.instances]
    assert max(src) >= 5  # not simply the first five frames
    assert len(InstanceBank.from_dataset(frames, [5], min_pixels=4, max_per_class=None)) == 30


def test_sample_is_uniform_over_classes() -> None:
    insts = [Instance(5, np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool), "a")]
    insts += [Instance(6, np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool), f"b{i}") for i in range(20)]
    bank = InstanceBank(insts)
    rng = np.random.default_rng(0)
    drawn = [bank.sample(rng).class_id for _ in range(2000)]
    assert 0.45 < drawn.count(5) / 2000 < 0.55
    assert bank.sample(rng, class_id=6).class_id == 6
    with pytest.raises(ConfigError, match="class 9 has no instances in the bank"):
        bank.sample(rng, class_id=9)
    with pytest.raises(DataError, match="empty"):
        InstanceBank([]).sample(rng)


def test_bank_errors_name_the_frame() -> None:
    frames = _dataset()
    frames[2] = Frame(frame_id="seq/nolabels", image=frames[2].image)
    with pytest.raises(DataError, match=r"frame 2 \(seq/nolabels\): copy-paste needs an image and image labels"):
        InstanceBank.from_dataset(frames, [5])
    bad = _frame(0, [], instances=np.zeros((3, 3), np.uint16))
    with pytest.raises(DataError, match=r"frame 0 \(seq/f000\): instance mask"):
        InstanceBank.from_dataset([bad], [5])
    with pytest.raises(ConfigError, match="classes is empty"):
        InstanceBank.from_dataset(frames, [])
    with pytest.raises(ConfigError, match="min_pixels"):
        InstanceBank.from_dataset(frames, [5], min_pixels=0)


# ---------------------------------------------------------------------------- pasting
def _square_bank(h: int = 10, w: int = 10, class_id: int = 5) -> InstanceBank:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = RED
    return InstanceBank([Instance(class_id, img, np.ones((h, w), bool), "src")])


def test_paste_exact_position_and_scale() -> None:
    cp = CopyPaste(_square_bank(), p=1.0)
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    inst = cp.bank.instances[0]
    out_img, out_mask = cp.apply(image, mask, [Paste(inst, 2.0, 5, 7)])
    ys, xs = np.nonzero(out_mask == 5)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 24, 7, 26)
    assert (out_mask == 5).sum() == 400
    assert (out_img[out_mask == 5] == RED).all() and (out_img[out_mask == 0] == 100).all()
    assert (image == 100).all() and (mask == 0).all()  # inputs untouched


def test_paste_is_clipped_at_the_border() -> None:
    cp = CopyPaste(_square_bank(), p=1.0)
    image, mask = np.zeros((30, 30, 3), np.uint8), np.zeros((30, 30), np.uint8)
    _, out = cp.apply(image, mask, [Paste(cp.bank.instances[0], 1.0, -4, 25)])
    assert (out == 5).sum() == 6 * 5
    _, out = cp.apply(image, mask, [Paste(cp.bank.instances[0], 1.0, 40, 40)])  # fully outside: no-op
    assert not out.any()


def test_paste_flip_mirrors_the_alpha() -> None:
    alpha = np.zeros((6, 6), bool)
    alpha[:, :2] = True
    alpha[4:, :] = True  # an L
    bank = InstanceBank([Instance(3, np.full((6, 6, 3), 200, np.uint8), alpha, "src")])
    cp = CopyPaste(bank, p=1.0)
    blank = np.zeros((6, 6, 3), np.uint8), np.zeros((6, 6), np.uint8)
    _, plain = cp.apply(*blank, [Paste(bank.instances[0], 1.0, 0, 0, flip=False)])
    _, flipped = cp.apply(*blank, [Paste(bank.instances[0], 1.0, 0, 0, flip=True)])
    np.testing.assert_array_equal(plain == 3, alpha)
    np.testing.assert_array_equal(flipped == 3, alpha[:, ::-1])


def test_call_adds_rare_pixels_consistently() -> None:
    bank = InstanceBank.from_dataset(_dataset(), [5, 6], min_pixels=16)
    cp = CopyPaste(bank, p=1.0, max_instances=3, scale=(0.5, 2.0))
    frame = _dataset()[3]
    image, mask = frame.image, frame.image_labels
    i0, m0 = image.copy(), mask.copy()
    pasted_any = 0
    for seed in range(20):
        out_img, out_mask = cp(image, mask, np.random.default_rng(seed))
        assert out_img.shape == image.shape and out_mask.dtype == mask.dtype
        for c, colour in ((5, RED), (6, BLUE)):
            sel = out_mask == c
            if not sel.any():
                continue
            pasted_any += 1
            # hard alpha over solid squares: every pixel labelled c is the object colour, up to
            # resampling at the object's edge
            close = np.abs(out_img[sel].astype(int) - colour).max(axis=1) <= 2
            assert close.mean() > 0.8
        changed = out_mask != mask
        assert set(np.unique(out_mask[changed]).tolist()) <= {5, 6}
        # outside the pasted pixels nothing changes
        np.testing.assert_array_equal(out_img[~changed], image[~changed])
    assert pasted_any >= 20
    np.testing.assert_array_equal(image, i0)
    np.testing.assert_array_equal(mask, m0)


def test_call_probability_and_determinism() -> None:
    cp = CopyPaste(_square_bank(), p=0.0)
    image, mask = np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)
    out_img, out_mask = cp(image, mask, np.random.default_rng(0))
    assert out_img is not image and out_mask is not mask and not out_mask.any()
    cp = CopyPaste(_square_bank(), p=0.5)
    hits = sum(bool(cp(image, mask, np.random.default_rng(s))[1].any()) for s in range(200))
    assert 70 < hits < 130
    a = cp(image, mask, np.random.default_rng(11))
    b = cp(image, mask, np.random.default_rng(11))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sampled_scales_and_counts_respect_the_bounds() -> None:
    cp = CopyPaste(_square_bank(), p=1.0, max_instances=3, scale=(0.2, 4.0))
    rng = np.random.default_rng(0)
    pastes = [p for _ in range(500) for p in cp.sample(rng, (100, 200))]
    counts = [len(cp.sample(rng, (100, 200))) for _ in range(300)]
    assert set(counts) == {1, 2, 3}
    scales = np.array([p.scale for p in pastes])
    assert scales.min() >= 0.2 and scales.max() <= 4.0
    assert 0.7 < np.median(scales) < 1.1  # log-uniform: geometric mean of 0.2 and 4 is 0.89
    for p in pastes:  # centre inside the image
        h = max(1, round(10 * p.scale))
        assert 0 <= p.top + h // 2 < 100 and 0 <= p.left + h // 2 < 200
    assert {p.flip for p in pastes} == {True, False}
    assert not any(p.flip for p in CopyPaste(_square_bank(), hflip=False).sample(rng, (10, 10), n=50))


def test_pasted_area_follows_the_scale() -> None:
    cp = CopyPaste(_square_bank(8, 8), p=1.0, scale=(0.5, 3.0))
    rng = np.random.default_rng(1)
    image, mask = np.zeros((400, 400, 3), np.uint8), np.zeros((400, 400), np.uint8)
    for _ in range(20):
        paste = cp.place(rng, cp.bank.instances[0], (400, 400))
        paste = Paste(paste.instance, paste.scale, 150, 150, paste.flip)  # fully inside
        _, out = cp.apply(image, mask, [paste])
        side = max(1, round(8 * paste.scale))
        assert (out == 5).sum() == side * side and 4 <= side <= 24


def test_blend_feathers_the_edge_and_marks_it_ignore() -> None:
    cp = CopyPaste(_square_bank(), p=1.0, blend=True, ignore_id=IGN)
    image, mask = np.full((40, 40, 3), 100, np.uint8), np.zeros((40, 40), np.uint8)
    out_img, out_mask = cp.apply(image, mask, [Paste(cp.bank.instances[0], 1.0, 10, 10)])
    assert (out_mask == 5).sum() == 100
    assert (out_img[out_mask == 5] == RED).all()  # the object itself stays opaque
    ring = out_mask == IGN
    assert ring.any() and ring[9, 12] and ring[12, 20] and not ring[5, 5]
    assert not np.array_equal(out_img[ring], np.full((ring.sum(), 3), 100))  # tinted
    assert (out_img[out_mask == 0] != RED).any(axis=1).all()


def test_mask_dtype_widens_for_large_ids() -> None:
    cp = CopyPaste(_square_bank(class_id=300), p=1.0)
    _, out = cp.apply(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8),
                      [Paste(cp.bank.instances[0], 1.0, 0, 0)])
    assert out.dtype == np.uint16 and (out == 300).sum() == 100


def test_copypaste_argument_errors() -> None:
    bank = _square_bank()
    with pytest.raises(ConfigError, match="probability"):
        CopyPaste(bank, p=1.5)
    with pytest.raises(ConfigError, match="max_instances"):
        CopyPaste(bank, max_instances=0)
    with pytest.raises(ConfigError, match="scale"):
        CopyPaste(bank, scale=(2.0, 1.0))
    with pytest.raises(ConfigError, match="InstanceBank"):
        CopyPaste([], p=1.0)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="mask must be an integer array of shape"):
        CopyPaste(bank)(np.zeros((5, 5, 3), np.uint8), np.zeros((4, 5), np.uint8), np.random.default_rng(0))


# ---------------------------------------------------------------------------- offline
def test_offline_writes_a_readable_generic_dataset(tmp_path) -> None:
    data = _dataset()
    bank = InstanceBank.from_dataset(data, [5, 6], min_pixels=16)
    n = copy_paste_offline(data, bank, tmp_path / "cp", k=2, seed=3)
    assert n == 2 * len(bank) == 8
    ds = GenericDataset(tmp_path / "cp")
    assert len(ds) == 8
    with open(tmp_path / "cp" / "copypaste.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["stem"] for r in rows} == set(ds.frame_ids())
    by_stem = {r["stem"]: r for r in rows}
    targets_by_instance: dict[str, list[str]] = {}
    for frame in ds:
        row = by_stem[frame.frame_id]
        assert frame.image.shape == (48, 64, 3) and frame.image_labels.shape == (48, 64)
        assert row["target"] != row["source"]  # never pasted back into its own frame
        assert frame.frame_id.startswith(row["target"].replace("/", "_") + "__cp")
        cid = int(row["class_id"])
        assert (frame.image_labels == cid).any()
        assert 0.2 <= float(row["scale"]) <= 4.0
        target = next(f for f in data if f.frame_id == row["target"])
        changed = frame.image_labels != target.image_labels
        assert set(np.unique(frame.image_labels[changed]).tolist()) <= {cid}
        assert bank.instances[int(row["instance"])].class_id == cid
        targets_by_instance.setdefault(row["instance"], []).append(row["target"])
    # every source instance goes to two different targets
    assert len(targets_by_instance) == len(bank)
    assert all(len(set(t)) == len(t) == 2 for t in targets_by_instance.values())
    # deterministic: the same seed writes the same files
    copy_paste_offline(data, bank, tmp_path / "again", k=2, seed=3)
    for p in sorted((tmp_path / "cp").rglob("*.png")):
        assert p.read_bytes() == (tmp_path / "again" / p.relative_to(tmp_path / "cp")).read_bytes()


def test_offline_split_and_errors(tmp_path) -> None:
    data = _dataset()
    bank = InstanceBank.from_dataset(data, [6], min_pixels=16)
    n = copy_paste_offline(data, bank, tmp_path / "cp", k=1, split="train", seed=0)
    assert n == 2 and len(GenericDataset(tmp_path / "cp", split="train")) == 2
    with pytest.raises(ConfigError, match="k "):
        copy_paste_offline(data, bank, tmp_path / "x", k=0)
    with pytest.raises(DataError, match="empty"):
        copy_paste_offline([], bank, tmp_path / "x")
    unlabeled = [Frame(frame_id=f"u{i}", image=np.zeros((8, 8, 3), np.uint8)) for i in range(3)]
    with pytest.raises(DataError, match=r"frame \d \(u\d\): copy-paste target needs an image and image labels"):
        copy_paste_offline(unlabeled, bank, tmp_path / "y")


# ---------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_rellis_instances(shared_data) -> None:
    from terraseg.io.images import read_image
    from terraseg.io.labels import read_label_png

    stem = shared_data / "rellis3d" / "frame000104-1581624663_149"
    frame = Frame(frame_id="rellis/000104", image=read_image(stem.with_suffix(".jpg")),
                  image_labels=read_label_png(stem.with_suffix(".png")))
    rare = [8, 9, 18]  # vehicle, object, fence: the rarest classes of this frame (207, 6727, 4880 px)
    bank = InstanceBank.from_dataset([frame], rare, min_pixels=50)
    assert set(bank.classes) <= set(rare) and 9 in bank.classes and 18 in bank.classes
    assert sum(i.pixels for i in bank.instances) <= 207 + 6727 + 4880
    for inst in bank.instances:
        assert inst.pixels >= 50 and inst.image.shape[:2] == inst.alpha.shape
    cp = CopyPaste(bank, p=1.0, max_instances=3)
    out_img, out_mask = cp(frame.image, frame.image_labels, np.random.default_rng(0))
    gained = [(out_mask == c).sum() - (frame.image_labels == c).sum() for c in bank.classes]
    assert out_img.shape == frame.image.shape and max(gained) > 0
