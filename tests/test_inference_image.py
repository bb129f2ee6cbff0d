"""Image inference (windows, TTA, predictors), prediction writers, inputs (images, folders, video) and GOOSE submissions."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.inference.image import (
    ImagePredictor,
    TTAConfig,
    WindowConfig,
    infer_probabilities,
    window_starts,
)
from terraseg.inference.submission import submission_name, write_goose_submission
from terraseg.inference.writers import (
    OverlayVideoWriter,
    PredictionWriter,
    blend_overlay,
    count_inputs,
    iter_inputs,
    video_fps,
)
from terraseg.io.images import read_image, write_image
from terraseg.io.labels import read_color_png, read_label_png, write_color_png, write_label_png
from terraseg.models import save_checkpoint
from terraseg.models.image import Normalization, build_image_model
from terraseg.ontology import Ontology, get_ontology
from terraseg.ontology.core import ClassInfo

GOOSE_NAME = "2022-07-22_flight__0071_1658494234334310308"


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs: a second thread only adds synchronisation (and contention)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _conv1x1(k: int = 4) -> nn.Module:
    """A translation-equivariant model: one 1x1 convolution (B, 3, h, w) -> (B, k, h, w)."""
    conv = nn.Conv2d(3, k, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * 2)
    return conv.eval()


def _tiny_ontology(k: int) -> Ontology:
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    return Ontology(name="tiny", classes=tuple(ClassInfo(i, f"c{i}", colors[i]) for i in range(k)),
                    void_ids=frozenset({0}), ignore_ids=frozenset({0}))


# ---------------------------------------------------------------------------------------------- configs
def test_tta_parse_forms_and_views() -> None:
    a = TTAConfig.parse("scales=0.75,1,1.25,1.5 flip=true")
    b = TTAConfig.parse(["scales=0.75,1,1.25,1.5", "flip=true"])
    c = TTAConfig.parse({"scales": [0.75, 1, 1.25, 1.5], "flip": True})
    assert a == b == c == TTAConfig((0.75, 1.0, 1.25, 1.5), True)
    assert len(a.views) == 8 and a.views[:2] == [(0.75, False), (0.75, True)]
    assert TTAConfig.parse(None) == TTAConfig() and TTAConfig.parse("") == TTAConfig()
    assert TTAConfig.parse("flip") == TTAConfig(flip=True)
    assert TTAConfig.parse(str(a)) == a
    assert TTAConfig.parse(a) is a


@pytest.mark.parametrize(("spec", "message"), [
    ("scales=0.5 zoom=2", "unknown keys ['zoom']"),
    ("scales=abc", "must be numbers"),
    ("scales=0,1", "must be in (0, 16]"),
    ("flip=maybe", "expected true or false"),
    ("scales=1,1", "repeat"),
    ("scales", "needs values"),
    ({"scales": []}, "at least one scale"),
])
def test_tta_parse_errors(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        TTAConfig.parse(spec)  # type: ignore[arg-type]


def test_window_parse_and_validation() -> None:
    w = WindowConfig.parse("slide crop=512x1024 stride=384x768")
    assert w == WindowConfig("slide", (512, 1024), (384, 768))
    assert WindowConfig.parse("mode=slide crop=64") == WindowConfig("slide", (64, 64), (48, 48))
    assert WindowConfig.parse({"mode": "slide", "crop": [32, 48], "stride": "16,24"}).stride == (16, 24)
    assert WindowConfig.parse(None) == WindowConfig() and WindowConfig.parse(str(w)) == w
    with pytest.raises(ConfigError, match="'whole' or 'slide'"):
        WindowConfig("tiles")
    with pytest.raises(ConfigError, match="larger than the crop"):
        WindowConfig("slide", (32, 32), (40, 16))
    with pytest.raises(ConfigError, match="unknown keys"):
        WindowConfig.parse("slide size=32")
    with pytest.raises(ConfigError, match="HxW"):
        WindowConfig.parse("slide crop=1x2x3")


def test_window_starts_cover_and_align() -> None:
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(16, 16, 8) == [0]
    assert window_starts(37, 16, 10) == [0, 10, 20, 21]
    for size, crop, stride in [(37, 16, 10), (100, 33, 7), (64, 32, 32), (65, 32, 32)]:
        starts = window_starts(size, crop, stride)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + crop] = True
        assert covered.all() and starts[-1] + crop == size and starts[0] == 0
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


# ---------------------------------------------------------------------------------------------- core
@pytest.mark.parametrize(("shape", "crop", "stride"), [
    ((2, 3, 37, 53), (16, 24), (10, 20)),
    ((1, 3, 20, 30), (32, 48), (16, 24)),      # smaller than the crop: padded, one window
    ((1, 3, 40, 21), (16, 32), (16, 16)),      # taller than the crop, narrower than it
])
def test_slide_equals_whole_for_translation_equivariant_model(shape: tuple[int, ...], crop: tuple[int, int],
                                                              stride: tuple[int, int]) -> None:
    model = _conv1x1(4)
    x = torch.randn(shape)
    whole = infer_probabilities(model, x, 4)
    calls: list[tuple[int, ...]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return model(t)

    for bw in (1, 3):
        calls.clear()
        slide = infer_probabilities(fn, x, 4, WindowConfig("slide", crop, stride), batch_windows=bw)
        assert slide.shape == (shape[0], 4, shape[2], shape[3]) and slide.dtype == torch.float32
        torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)
        assert all(c[0] <= bw and c[2:] == crop for c in calls)  # windows padded to the crop, batched
    torch.testing.assert_close(whole, torch.softmax(model(x), 1))
    torch.testing.assert_close(whole.sum(1), torch.ones(shape[0], shape[2], shape[3]))


def test_slide_averages_overlaps_with_count_map() -> None:
    """A model whose logits depend on the window position: overlaps average the windows' logits."""
    x = torch.zeros(1, 3, 8, 12)
    seen = iter(range(100))

    def fn(t: torch.Tensor) -> torch.Tensor:  # window i predicts logit i for class 1, 0 for class 0
        out = torch.zeros(t.shape[0], 2, *t.shape[-2:])
        for b in range(t.shape[0]):
            out[b, 1] = float(next(seen))
        return out

    p = infer_probabilities(fn, x, 2, WindowConfig("slide", (8, 8), (8, 4)), batch_windows=1)
    # windows start at x = 0 and x = 4 (aligned to the border): columns 4..7 average logits 0 and 1
    sig = torch.sigmoid
    torch.testing.assert_close(p[0, 1, 0, 0], sig(torch.tensor(0.0)))
    torch.testing.assert_close(p[0, 1, 0, 5], sig(torch.tensor(0.5)))
    torch.testing.assert_close(p[0, 1, 0, 11], sig(torch.tensor(1.0)))


def test_tta_flip_hand_check_and_symmetric_input() -> None:
    w = 6

    def ramp(t: torch.Tensor) -> torch.Tensor:  # class-1 logit = column index, class 0 = 0
        out = torch.zeros(t.shape[0], 2, *t.shape[-2:])
        out[:, 1] = torch.arange(t.shape[-1], dtype=torch.float32)
        return out

    x = torch.randn(1, 3, 4, w)
    p = infer_probabilities(ramp, x, 2, tta=TTAConfig(flip=True))
    cols = torch.arange(w, dtype=torch.float32)
    expected = (torch.sigmoid(cols) + torch.sigmoid(w - 1 - cols)) / 2
    torch.testing.assert_close(p[0, 1, 2], expected)

    # a flip-equivariant model (1x1 conv): flip TTA changes nothing; a flip-symmetric input stays symmetric
    model = _conv1x1(3)
    half = torch.randn(1, 3, 9, 8)
    sym = torch.cat([half, torch.flip(half, dims=(3,))], dim=3)
    plain = infer_probabilities(model, sym, 3)
    flipped = infer_probabilities(model, sym, 3, tta=TTAConfig(flip=True))
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(flipped, torch.flip(flipped, dims=(3,)), atol=1e-6, rtol=1e-6)
    conv3 = nn.Conv2d(3, 3, 3, padding=1).eval()  # not flip-equivariant: the flip-TTA result is still symmetric
    q = infer_probabilities(conv3, sym, 3, tta=TTAConfig(flip=True))
    torch.testing.assert_close(q, torch.flip(q, dims=(3,)), atol=1e-6, rtol=1e-6)


def test_tta_scales_hand_check() -> None:
    seen: list[tuple[int, int]] = []

    def size_logits(t: torch.Tensor) -> torch.Tensor:  # class-0 logit = 0.1 * view height
        seen.append((int(t.shape[-2]), int(t.shape[-1])))
        out = torch.zeros(t.shape[0], 2, *t.shape[-2:])
        out[:, 0] = 0.1 * t.shape[-2]
        return out

    x = torch.randn(2, 3, 20, 30)
    p = infer_probabilities(size_logits, x, 2, tta=TTAConfig((0.5, 1.0, 1.5)))
    assert seen == [(10, 15), (20, 30), (30, 45)]
    expected = (1 / (1 + math.exp(-1.0)) + 1 / (1 + math.exp(-2.0)) + 1 / (1 + math.exp(-3.0))) / 3
    assert p.shape == (2, 2, 20, 30)
    torch.testing.assert_close(p[:, 0], torch.full((2, 20, 30), expected))
    # scales with sliding windows: every view is cut into windows (a view smaller than the crop is padded)
    seen.clear()
    p2 = infer_probabilities(size_logits, x, 2, WindowConfig("slide", (16, 16), (16, 16)), TTAConfig((0.5, 1.0)),
                             batch_windows=8)
    assert set(seen) == {(16, 16)} and p2.shape == (2, 2, 20, 30)


def test_infer_rejects_bad_model_output() -> None:
    with pytest.raises(ValueError, match=r"expected logits \(1, 3, 8, 8\)"):
        infer_probabilities(lambda t: torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 8), 3)
    with pytest.raises(ValueError, match="expected a batch"):
        infer_probabilities(_conv1x1(2), torch.zeros(3, 8, 8), 2)
    # train-mode style dict outputs are accepted
    p = infer_probabilities(lambda t: {"out": torch.zeros(1, 2, 8, 8), "aux": None}, torch.zeros(1, 3, 8, 8), 2)
    torch.testing.assert_close(p, torch.full((1, 2, 8, 8), 0.5))


# ---------------------------------------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def litefpn() -> nn.Module:
    torch.manual_seed(0)
    return build_image_model("litefpn", num_classes=5, ontology=_tiny_ontology(5), channels=16).eval()


def test_image_predictor_litefpn(litefpn: nn.Module) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)
    pred = ImagePredictor(litefpn, device="cpu")
    assert pred.num_classes == 5 and pred.ontology is not None and pred.ontology.name == "tiny"
    ids = pred.predict(img)
    assert ids.shape == (45, 67) and ids.dtype == np.uint8 and ids.max() < 5
    probs = pred.probabilities(img)
    assert probs.shape == (5, 45, 67) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), ids)
    # reference: the model on the normalised image
    x = torch.from_numpy(Normalization().numpy(img))[None]
    with torch.no_grad():
        ref = litefpn(x).argmax(1)[0].numpy()
    assert (ref == ids).mean() == 1.0

    other = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    batch = pred.predict_batch([img, other, img])
    assert [b.shape for b in batch] == [(45, 67), (30, 41), (45, 67)]
    np.testing.assert_array_equal(batch[0], ids)
    np.testing.assert_array_equal(batch[1], pred.predict(other))

    # base size: resized in, probabilities resized back to the image size
    based = ImagePredictor(litefpn, device="cpu", base_size=(32, 48), window="slide crop=32x32 stride=16x16",
                           tta="scales=1,1.25 flip=true")
    assert based.predict(img).shape == (45, 67) and based.probabilities(img).shape == (5, 45, 67)
    assert ImagePredictor(litefpn, device="cpu", amp=True).predict(img).shape == (45, 67)
    with pytest.raises(DataError, match=r"expected an \(H, W, 3\) uint8 RGB image"):
        pred.predict(img.astype(np.float32))


def test_image_predictor_from_checkpoint(tmp_path: Path, litefpn: nn.Module) -> None:
    ck = save_checkpoint(tmp_path / "m.pth", litefpn,
                         meta={"preprocess": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "base_size": [32, 48]}})
    pred = ImagePredictor.from_checkpoint(ck, device="cpu", window="slide crop=32x48 stride=16x24")
    assert pred.norm == Normalization((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert pred.base_size == (32, 48) and pred.window.mode == "slide"
    assert pred.ontology is not None and pred.ontology.names == _tiny_ontology(5).names
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert pred.predict(img).shape == (50, 70)
    assert ImagePredictor.from_checkpoint(ck, device="cpu", base_size=None).base_size is None
    with pytest.raises(DataError, match="checkpoint file not found"):
        ImagePredictor.from_checkpoint(tmp_path / "missing.pth")


def test_predictor_uint16_ids_and_errors() -> None:
    class Wide(nn.Module):
        num_classes = 300

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 300, *x.shape[-2:])
            out[:, 299] = 1.0
            return out

    ids = ImagePredictor(Wide(), device="cpu").predict(np.zeros((4, 5, 3), np.uint8))
    assert ids.dtype == np.uint16 and (ids == 299).all()
    assert ImagePredictor(Wide(), device="cpu").predict(np.zeros((3, 5, 3), np.uint8)).shape == (3, 5)  # H == 3
    with pytest.raises(ConfigError, match="num_classes"):
        ImagePredictor(nn.Conv2d(3, 2, 1), device="cpu")
    with pytest.raises(ConfigError, match="invalid device"):
        ImagePredictor(Wide(), device="gpu:zero")


# ---------------------------------------------------------------------------------------------- writers
def test_prediction_writer_outputs(tmp_path: Path) -> None:
    onto = get_ontology("goose")
    rng = np.random.default_rng(0)
    image = np.empty((24, 32, 3), np.uint8)
    image[:] = (100, 150, 200)
    labels = np.kron(rng.choice(onto.ids, size=(3, 4)), np.ones((8, 8), int)).astype(np.uint8)  # 8x8 blocks
    writer = PredictionWriter(tmp_path / "out", "goose", alpha=0.25)
    paths = writer.write("scene_a/000001", image, labels)
    assert paths == {"ids": tmp_path / "out/ids/scene_a/000001.png", "color": tmp_path / "out/color/scene_a/000001.png",
                     "overlay": tmp_path / "out/overlay/scene_a/000001.jpg"}
    ids = read_label_png(paths["ids"])
    assert ids.dtype == np.uint8 and np.array_equal(ids, labels)
    assert Image.open(paths["ids"]).mode == "L"
    color = read_color_png(paths["color"])
    np.testing.assert_array_equal(color, onto.palette[labels])
    overlay = read_image(paths["overlay"])
    assert overlay.shape == (24, 32, 3)
    expected = blend_overlay(image, onto.palette[labels], 0.25)
    assert np.abs(overlay.astype(int) - expected.astype(int)).mean() < 3  # JPEG of flat 8x8 blocks
    assert np.abs(overlay[4, 4].astype(int) - (0.75 * image[4, 4] + 0.25 * onto.palette[labels[4, 4]])).max() < 4
    assert get_ontology(tmp_path / "out/ontology.yaml").names == onto.names

    only_ids = PredictionWriter(tmp_path / "o2", onto, color=False, overlay=False)
    assert set(only_ids.write("x", image, labels)) == {"ids"}
    assert not (tmp_path / "o2/color").exists()

    bad = labels.copy()
    bad[0, 0] = 200
    with pytest.raises(DataError, match="not ids of ontology 'goose'"):
        writer.write("bad", image, bad)
    assert not list((tmp_path / "out").rglob("bad*"))
    with pytest.raises(DataError, match="do not match the image"):
        writer.write("shape", image, labels[:10])
    with pytest.raises(DataError, match="invalid output stem"):
        writer.write("../escape", image, labels)
    with pytest.raises(ConfigError, match="alpha"):
        PredictionWriter(tmp_path, onto, alpha=1.5)


def test_iter_inputs_image_and_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = {name: rng.integers(0, 256, (8 + i, 10, 3), dtype=np.uint8)
            for i, name in enumerate(["b/2.png", "a.png", "b/1.png", "b/c/0.png"])}
    for name, arr in imgs.items():
        write_image(tmp_path / "in" / name, arr)
    (tmp_path / "in/notes.txt").write_text("not an image")
    (tmp_path / "in/.hidden").mkdir()
    write_image(tmp_path / "in/.hidden/skip.png", imgs["a.png"])
    got = list(iter_inputs(tmp_path / "in"))
    assert [s for s, _ in got] == ["a", "b/1", "b/2", "b/c/0"]
    for stem, arr in got:
        np.testing.assert_array_equal(arr, imgs[f"{stem}.png"])
    assert count_inputs(tmp_path / "in") == 4
    [(stem, arr)] = list(iter_inputs(tmp_path / "in/b/1.png"))
    assert stem == "1" and np.array_equal(arr, imgs["b/1.png"])

    (tmp_path / "empty/sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        iter_inputs(tmp_path / "empty")
    with pytest.raises(DataError, match="input not found"):
        iter_inputs(tmp_path / "nope.png")
    with pytest.raises(DataError, match="unknown input type '.txt'"):
        iter_inputs(tmp_path / "in/notes.txt")
    write_image(tmp_path / "in/a.jpg", imgs["a.png"])
    with pytest.raises(DataError, match="same name as"):
        iter_inputs(tmp_path / "in")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png: unreadable"):
        list(iter_inputs(tmp_path / "broken.png"))


def _solid_frames(n: int, h: int = 32, w: int = 48) -> list[np.ndarray]:
    return [np.full((h, w, 3), (10 * i, 200 - 10 * i, 100), dtype=np.uint8) for i in range(n)]


def test_video_input_and_overlay_video(tmp_path: Path) -> None:
    import cv2

    frames = _solid_frames(5)
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (48, 32))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    got = list(iter_inputs(path))
    assert [s for s, _ in got] == [f"frame_{i:06d}" for i in range(5)]
    for (_, arr), ref in zip(got, frames):
        assert arr.shape == (32, 48, 3) and arr.dtype == np.uint8
        assert np.abs(arr.astype(int) - ref.astype(int)).mean() < 4  # RGB order kept, MJPG is lossy
    assert count_inputs(path) == 5 and video_fps(path) == pytest.approx(12.0)

    out = tmp_path / "pred.mp4"
    with OverlayVideoWriter(out, fps=5) as writer:
        for f in frames:
            writer.write(f)
    assert writer.frames == 5 and out.is_file()
    assert len(list(iter_inputs(out))) == 5
    with pytest.raises(RuntimeError), OverlayVideoWriter(tmp_path / "failed.avi") as w2:
        w2.write(frames[0])
        raise RuntimeError("interrupted")
    assert not list(tmp_path.glob("*failed*"))
    with pytest.raises(DataError, match="frame 1 is 10x10"), OverlayVideoWriter(tmp_path / "sizes.avi") as w3:
        w3.write(frames[0])
        w3.write(np.zeros((10, 10, 3), np.uint8))
    assert not list(tmp_path.glob("*sizes*"))

    (tmp_path / "fake.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="fake.mp4: cannot open the video"):
        iter_inputs(tmp_path / "fake.mp4")


# ---------------------------------------------------------------------------------------------- submission
def _zip_members(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        out = {}
        for name in zf.namelist():
            img = Image.open(BytesIO(zf.read(name)))
            assert img.mode == "L", name
            out[name] = np.asarray(img)
        return out


def test_submission_names() -> None:
    stem = f"2022-07-22_flight/{GOOSE_NAME}_windshield_vis"
    assert submission_name(stem) == f"{GOOSE_NAME}_windshield_vis.png"
    assert submission_name(stem, "labelids") == f"{GOOSE_NAME}_labelids.png"
    assert submission_name(stem, "labelids", flat=False) == f"2022-07-22_flight/{GOOSE_NAME}_labelids.png"
    assert submission_name("scene/x_camera_left", "labelids") == "x_labelids.png"
    assert submission_name("x_labelids", "labelids") == "x_labelids.png"
    assert submission_name("plain", "labelids") == "plain_labelids.png"
    with pytest.raises(ConfigError, match="naming"):
        submission_name("x", "ids")


def test_goose_submission_zip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    test_images = tmp_path / "goose/images/test"
    stems = [f"2022-07-22_flight/{GOOSE_NAME}_windshield_vis", f"2023-05-17_neubiberg/{GOOSE_NAME[:-1]}7_windshield_vis"]
    preds = {}
    for s in stems:
        write_image(test_images / f"{s}.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        preds[s] = rng.integers(0, 64, (12, 16)).astype(np.uint8)
    # a PredictionWriter folder (its ids/ are used) and (stem, array) pairs give the same zip content
    writer = PredictionWriter(tmp_path / "pred", "goose", color=False, overlay=False)
    for s, lab in preds.items():
        writer.write(s, np.zeros((12, 16, 3), np.uint8), lab)
    rep = write_goose_submission(tmp_path / "pred", tmp_path / "sub.zip", images=test_images)
    assert rep.count == 2 and rep.ontology == "goose" and rep.flat and rep.naming == "image"
    members = _zip_members(tmp_path / "sub.zip")
    assert sorted(members) == sorted(f"{Path(s).name}.png" for s in stems) == list(rep.names)
    for s in stems:
        np.testing.assert_array_equal(members[f"{Path(s).name}.png"], preds[s])
    rep2 = write_goose_submission(list(preds.items()), tmp_path / "sub2.zip", naming="labelids", flat=False)
    assert sorted(_zip_members(tmp_path / "sub2.zip")) == sorted(
        s.replace("_windshield_vis", "_labelids") + ".png" for s in stems) == list(rep2.names)
    # 16-bit and palette PNGs with valid ids are accepted and re-encoded as 8-bit L
    write_label_png(tmp_path / "p16/a.png", np.full((4, 4), 63, np.uint16))
    Image.fromarray(np.full((4, 4), 63, np.uint16)).save(tmp_path / "p16/b.png")
    Image.fromarray(np.full((4, 4), 5, np.uint8)).convert("P").save(tmp_path / "p16/c.png")
    members = _zip_members(write_goose_submission(tmp_path / "p16", tmp_path / "p16.zip").path)
    assert {k: int(v.max()) for k, v in members.items()} == {"a.png": 63, "b.png": 63, "c.png": 5}


def test_goose_submission_errors_leave_no_zip(tmp_path: Path) -> None:
    good = np.zeros((6, 8), np.uint8)
    out = tmp_path / "sub.zip"

    def fails(match: str, *args: object, **kw: object) -> None:
        with pytest.raises(DataError, match=match):
            write_goose_submission(*args, **kw)  # type: ignore[arg-type]
        assert not out.exists() and not list(tmp_path.glob(".sub*"))

    bad_ids = good.copy()
    bad_ids[2, 3] = 64
    fails(r"prediction 'b_windshield_vis': 1 values are not ids of ontology 'goose': 64 \(1x\)",
          [("a_windshield_vis", good), ("b_windshield_vis", bad_ids)], out)
    write_color_png(tmp_path / "rgb/x.png", np.zeros((6, 8, 3), np.uint8))
    fails(r"x.png: a RGB image; submissions need single-channel", tmp_path / "rgb", out)
    fails("both become 'x_windshield_vis.png'", [("s1/x_windshield_vis", good), ("s2/x_windshield_vis", good)], out)
    fails("nothing_here: prediction folder not found", tmp_path / "nothing_here", out)
    (tmp_path / "empty").mkdir()
    fails("no .png predictions found", tmp_path / "empty", out)
    fails("no predictions given", [], out)
    fails(r"expected an \(H, W\) integer id array", [("f_windshield_vis", good.astype(np.float32))], out)
    write_image(tmp_path / "test/s/a_windshield_vis.png", np.zeros((6, 8, 3), np.uint8))
    write_image(tmp_path / "test/s/b_windshield_vis.png", np.zeros((6, 8, 3), np.uint8))
    fails(r"1 test images have no prediction: b_windshield_vis.png", [("s/a_windshield_vis", good)], out,
          images=tmp_path / "test")
    fails(r"1 predictions match no test image: c_windshield_vis.png",
          [("s/a_windshield_vis", good), ("s/b_windshield_vis", good), ("s/c_windshield_vis", good)], out,
          images=tmp_path / "test")
    fails(r"prediction is 4x6 but its test image is 8x6",
          [("s/a_windshield_vis", good), ("s/b_windshield_vis", np.zeros((6, 4), np.uint8))], out,
          images=tmp_path / "test")
    # a previous zip is left untouched by a failed run
    out.write_bytes(b"old")
    with pytest.raises(DataError):
        write_goose_submission([("a", bad_ids)], out)
    assert out.read_bytes() == b"old"


@pytest.mark.realdata
def test_real_image_predict_and_write(shared_data: Path, tmp_path: Path) -> None:
    """A real 1920x1200 RELLIS-3D camera image through the predictor (at a 240x384 base size) and the writer."""
    path = shared_data / "rellis3d/frame000104-1581624663_149.jpg"
    [(stem, image)] = list(iter_inputs(path))
    assert stem == "frame000104-1581624663_149" and image.shape == (1200, 1920, 3)
    model = build_image_model("litefpn", ontology="goose", channels=16)
    pred = ImagePredictor(model, device="cpu", base_size=(240, 384), tta="flip=true")
    labels = pred.predict(image)
    assert labels.shape == (1200, 1920) and labels.dtype == np.uint8 and labels.max() <= 63
    paths = PredictionWriter(tmp_path, "goose").write(stem, image, labels)
    assert read_label_png(paths["ids"]).shape == (1200, 1920)
    assert read_image(paths["overlay"]).shape == (1200, 1920, 3)
