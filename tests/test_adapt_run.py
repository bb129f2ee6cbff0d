"""``terraseg adapt`` end to end on a tiny simulated target: recipe errors before any run folder,
two oracle query rounds (budget met exactly per scan, never re-queried, labels = the ground truth
at the queried points, overwriting the pseudo-labels), regenerated pseudo-labels, the real
labelled fraction in the logs, and an interrupted run resumed exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_adapt_pseudo_cli import tiny_fusion_recipe
from typer.testing import CliRunner

from terraseg.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(one_thread: object, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from terraseg.sim.dataset import simulate_dataset
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import train

    root = tmp_path_factory.mktemp("adapt")
    simulate_dataset(root / "sim", frames=5, seed=11, camera="tiny", lidar="small", progress=False,
                     splits={"train": 0.6, "val": 0.4})
    res = train(TrainConfig.from_dict(tiny_fusion_recipe(root / "sim", root / "runs")), progress=False)
    return {"root": root, "data": root / "sim", "source": res.last_checkpoint}


def adapt_recipe(setup: dict, path: Path, name: str = "ad", **extra: object) -> Path:
    d = tiny_fusion_recipe(setup["data"], setup["root"] / "runs", name=name, steps=3)
    d["trainer"].update({"checkpoint_every_steps": 1})
    d["adapt"] = {"source": str(setup["source"]),
                  "pseudo_labels": {"regenerate": True},
                  "active": {"strategy": "entropy", "budget": 2.0, "at": [0.0, 0.5], "annotator": "oracle"}}
    for k, v in extra.items():
        node = d
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if v is None and parts[-1] in node:
            del node[parts[-1]]
        else:
            node[parts[-1]] = v
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize(("extra", "error"), [
    ({"adapt": None}, "needs an adapt: section"),
    ({"adapt.active.foo": 1}, "unknown key 'adapt.active.foo'"),
    ({"adapt.active.strategy": "smart"}, "adapt.active.strategy: unknown strategy 'smart'; known: random,"),
    ({"adapt.active.budget": 0}, "adapt.active: "),
    ({"adapt.active.budget": 150}, "adapt.active: "),
    ({"adapt.active.at": [0.5, 2.0]}, "query fractions must lie in [0, 1]"),
    ({"adapt.active.options": {"k": 4, "bogus": 1}}, "adapt.active.options: unknown key 'bogus'"),
    ({"adapt.source": None}, "adapt.source is required"),
    ({"adapt.source": "/nonexistent/source.pth"}, "adapt.source /nonexistent/source.pth: checkpoint not found"),
    ({"loss": [{"name": "ce", "class_weights": "log"}]}, "would be counted on the target's ground truth"),
    ({"fusion": {"target": {"root": "x"}}}, "fusion.target does not apply to source-free adaptation"),
    ({"trainer.max_steps": None, "trainer.max_epochs": 2}, "set trainer.max_steps"),
    ({"adapt.pseudo_labels.dir": "/nonexistent/pl"}, "no finished pseudo-label folder"),
    ({"model.net3d": {"arch": "voxelunet", "preset": "scn", "in_channels": 4}},
     "model.net3d.arch is 'voxelunet', the source's is 'randlanet'; model.net3d.preset is 'scn', the source's is "
     "'small'. Copy model: from the source run's config.yaml"),
    ({"model.net3d.options": {"input_norm": False}}, "model.net3d.options.input_norm is False, the source's is True"),
])
def test_adapt_recipe_errors_are_one_line_and_leave_no_run_folder(setup: dict, tmp_path: Path, extra: dict,
                                                                  error: str) -> None:
    recipe = adapt_recipe(setup, tmp_path / "r.yaml", name="bad", output=str(tmp_path / "runs"), **extra)
    r = runner.invoke(app, ["adapt", str(recipe), "-q"])
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert text.startswith("error:") and error in text and "Traceback" not in text
    assert not (tmp_path / "runs").exists()


def test_a_camera_checkpoint_as_source_is_refused_before_the_run_folder(setup: dict, tmp_path: Path) -> None:
    from terraseg.models.image import build_image_model
    from terraseg.models.surgery import save_checkpoint

    cam = build_image_model("litefpn", "tu-mobilenetv3_small_100", 20, pretrained=False)
    path = save_checkpoint(tmp_path / "camera.pth", cam, spec=cam.spec)  # type: ignore[arg-type]
    recipe = adapt_recipe(setup, tmp_path / "r.yaml", output=str(tmp_path / "runs"), **{"adapt.source": str(path)})
    r = runner.invoke(app, ["adapt", str(recipe), "-q"])
    assert r.exit_code == 1
    assert "need a cross-modal camera + LiDAR checkpoint" in " ".join(r.output.split())
    assert not (tmp_path / "runs" / "ad").exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from terraseg.models.surgery import read_checkpoint

    return dict(read_checkpoint(path).state_dict)


def _losses(run: Path) -> list[tuple[str, str]]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss")]


def test_adapt_rounds_budget_labels_and_exact_resume(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.active import budget_count, labelled_masks, load_round, load_round_labels
    from terraseg.active.pseudo_labels import PseudoLabels
    from terraseg.datasets import open_dataset
    from terraseg.models.fusion.view import frame_view
    from terraseg.training.adapt import AdaptLabels

    out = tmp_path / "runs"
    recipe = adapt_recipe(setup, tmp_path / "a.yaml", output=str(out))
    r = runner.invoke(app, ["adapt", str(recipe), "-q"])
    assert r.exit_code == 0, r.output
    run = out / "ad"
    text = " ".join(r.output.split())
    assert "round 0 at step 0 (entropy)" in text and "round 1 at step 1 (entropy)" in text
    state = json.loads((run / "adapt_state.json").read_text())["rounds"]
    assert [(e["round"], e["step"]) for e in state] == [(0, 0), (1, 1)]
    ds = open_dataset(setup["data"], kind="sim", split="train")
    frames = {str(ds[i].frame_id): ds[i] for i in range(len(ds))}
    r0, r1 = load_round(run / "queries", 0), load_round(run / "queries", 1)
    for f0 in r0.frames:
        f1 = r1.frame(f0.name)
        view = frame_view(frames[f0.name]).index
        assert f0.n == f1.n == len(view)
        assert f0.budget == f1.budget == budget_count(1.0, f0.n)  # 2 % over 2 rounds, each met exactly
        assert not set(f0.indices.tolist()) & set(f1.indices.tolist())  # never queried again
        assert f1.labelled_before == f0.budget
        gt = np.asarray(frames[f0.name].point_labels)[view]
        np.testing.assert_array_equal(load_round_labels(run / "queries", 0)[f0.name], gt[f0.indices])
        np.testing.assert_array_equal(load_round_labels(run / "queries", 1)[f1.name], gt[f1.indices])
    masks = labelled_masks(run / "queries")
    total = sum(int(m.sum()) for m in masks.values())
    assert state[-1]["queried_total"] == total
    assert state[-1]["labelled_fraction"] == pytest.approx(total / sum(len(m) for m in masks.values()))
    # the real labelled fraction is logged
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    logged = [float(x["adapt/labelled_percent"]) for x in rows if x.get("adapt/labelled_percent")]
    assert logged and logged[-1] == pytest.approx(100 * state[-1]["labelled_fraction"], rel=1e-5)
    # pseudo-labels: the source's, then one regenerated folder per round
    assert all((run / "pseudo" / v / "summary.json").is_file() for v in ("v000", "v001", "v002"))
    # queried labels overwrite the pseudo-labels: what the samples carry
    labels = AdaptLabels(lambda: [run / "pseudo" / "v001", run / "pseudo" / "v002"], run / "queries", 0.1)
    name = r0.frames[0].name
    frame = frames[name]
    ext = labels(0, frame)
    view = frame_view(frame).index
    q_pts = view[np.concatenate([r0.frame(name).indices, r1.frame(name).indices])]
    np.testing.assert_array_equal(ext["queried"][q_pts], np.asarray(frame.point_labels)[q_pts])
    np.testing.assert_array_equal(np.sort(np.flatnonzero(ext["q_round"] >= 0)), np.sort(q_pts))
    pl = PseudoLabels.load(run / "pseudo" / "v002" / f"{name}.npz")
    np.testing.assert_array_equal(ext["pl_2d"], pl.full_labels("2d", -1))
    assert (ext["pl_version"] == 1).all()

    # the same run killed right after its step-1 checkpoint (round 1 done), then resumed: identical
    from terraseg.training.module import SegmentationModule

    original = SegmentationModule.training_step

    def killed(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.trainer.global_step == 2:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    recipe_b = adapt_recipe(setup, tmp_path / "b.yaml", name="ad", output=str(tmp_path / "runs_b"))
    monkeypatch.setattr(SegmentationModule, "training_step", killed)
    r = runner.invoke(app, ["adapt", str(recipe_b), "-q"])
    assert r.exit_code != 0 and isinstance(r.exception, RuntimeError)
    monkeypatch.setattr(SegmentationModule, "training_step", original)
    r = runner.invoke(app, ["adapt", str(recipe_b), "-q", "--resume"])
    assert r.exit_code == 0, r.output
    run_b = tmp_path / "runs_b" / "ad"
    # bit-exact (one CPU thread: with several, two identical cross-modal runs already differ in the 7th
    # digit, multi-threaded reductions, with or without an interruption)
    assert _losses(run_b) == _losses(run)
    wa, wb = _weights(run / "checkpoints" / "last.pth"), _weights(run_b / "checkpoints" / "last.pth")
    assert wa.keys() == wb.keys()
    far = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not far, f"weights differ after the resume: {far[:5]}"
    assert json.loads((run_b / "adapt_state.json").read_text())["rounds"] == state
    for k in (0, 1):
        ia = [f.indices.tolist() for f in load_round(run / "queries", k).frames]
        assert ia == [f.indices.tolist() for f in load_round(run_b / "queries", k).frames]


def test_adapt_task_targets_queried_over_pseudo_labels_from_their_step() -> None:
    from terraseg.training.adapt import AdaptTask

    ign = -1
    ext = {"pl_2d": torch.tensor([1, 1, ign, 2, 2]), "pl_3d": torch.tensor([3, ign, 3, 3, 3]),
           "pl_ens": torch.tensor([4, 4, 4, ign, 4]),
           "pl_2d_prev": torch.tensor([0, 0, 0, 0, 0]), "pl_3d_prev": torch.tensor([0, 0, 0, 0, 0]),
           "pl_ens_prev": torch.tensor([0, 0, 0, 0, 0]), "pl_version": torch.tensor([1, 1, 1, 1, 1]),
           "queried": torch.tensor([ign, 5, 6, ign, 7]), "q_round": torch.tensor([-1, 0, 1, -1, 0])}
    batch = {"point_extras": ext, "valid": torch.tensor([True, True, True, True, False]),
             "target": torch.full((5,), ign)}
    task = AdaptTask(use="own", lag=1)
    task.round_steps = [10, 20]
    ident = lambda t: t  # noqa: E731

    task.step = 10  # round 0 (and the pseudo-labels made at it) not yet in effect: previous version, no queries
    t2, t3, q = task.targets(batch, ident)
    assert t2.tolist() == [0, 0, 0, 0, ign] and q.tolist() == [ign] * 5
    task.step = 11  # round 0 in effect
    t2, t3, q = task.targets(batch, ident)
    assert q.tolist() == [ign, 5, ign, ign, ign]  # point 4 is padding (valid False)
    assert t2.tolist() == [1, 5, ign, 2, ign] and t3.tolist() == [3, 5, 3, 3, ign]
    task.step = 21
    t2, t3, q = task.targets(batch, ident)
    assert q.tolist() == [ign, 5, 6, ign, ign] and t2.tolist() == [1, 5, 6, 2, ign]
    task.use = "ensemble"
    t2, t3, _ = task.targets(batch, ident)
    assert t2.tolist() == t3.tolist() == [4, 5, 6, ign, ign]


def test_shipped_adapt_recipe_loads(setup: dict) -> None:
    from terraseg.training.adapt import load_adapt_recipe

    cfg, a = load_adapt_recipe(REPO / "configs" / "sim_adapt.yaml", [f"adapt.source={setup['source']}"])
    assert cfg.task == "fusion" and cfg.model.weights == str(setup["source"])
    assert a.active.strategy == "knn_entropy" and a.active.budget == 1.0 and a.active.at == [0.0]
    from terraseg.training.config import load_config

    source_recipe = load_config(REPO / "configs" / "sim_xmuda.yaml")  # adapts what that recipe trains
    assert (cfg.model.net2d, cfg.model.net3d) == (source_recipe.model.net2d, source_recipe.model.net3d)
    assert cfg.model.net3d is not None and cfg.model.net3d.arch == "voxelunet"


def test_human_annotator_stops_after_the_round_and_resumes_once_labels_are_imported(setup: dict,
                                                                                    tmp_path: Path) -> None:
    from terraseg.active import load_round, load_round_labels

    out = tmp_path / "runs"
    recipe = adapt_recipe(setup, tmp_path / "h.yaml", name="hu", output=str(out),
                          **{"adapt.active.annotator": "human", "adapt.active.at": [0.0],
                             "adapt.pseudo_labels.regenerate": False})
    r = runner.invoke(app, ["adapt", str(recipe), "-q"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    state = out / "hu" / "queries"
    assert f"round 0 waits for labels: terraseg query export {state} --out TASK" in text
    assert "adapted: 0 steps" in text and (out / "hu" / "checkpoints" / "last.ckpt").is_file()
    r = runner.invoke(app, ["adapt", str(recipe), "-q", "--resume"])
    assert r.exit_code == 1 and "round 0 has no labels yet" in " ".join(r.output.split())
    # a person labels the exported points (here: every point gets class id 3) and imports them
    task = tmp_path / "task"
    assert runner.invoke(app, ["query", "export", str(state), "--out", str(task), "-q"]).exit_code == 0
    for f in (task / "points").glob("**/*.csv"):
        rows = list(csv.DictReader(open(f)))
        with open(f, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**row, "label": "3"} for row in rows)
    r = runner.invoke(app, ["query", "import", str(task), "-q"])
    assert r.exit_code == 0, r.output
    rnd = load_round(state, 0)
    assert all((lab == 3).all() for lab in load_round_labels(state, 0).values()) and rnd.queried > 0
    r = runner.invoke(app, ["adapt", str(recipe), "-q", "--resume"])
    assert r.exit_code == 0, r.output
    assert "adapted: 3 steps" in " ".join(r.output.split())
    rows = list(csv.DictReader(open(out / "hu" / "metrics.csv")))
    assert any(x.get("train/loss_query_2d") for x in rows)  # the imported labels were trained on


def test_agreement_curve_points_are_the_miou_against_the_pseudo_labels() -> None:
    from terraseg.training.adapt import agreement_miou

    cm = torch.tensor([[2, 1, 0], [0, 3, 0], [0, 0, 0]])  # rows: pseudo-label, columns: prediction
    assert agreement_miou(cm) == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)  # class 2 absent: not averaged
    assert agreement_miou(torch.zeros(3, 3, dtype=torch.int64)) == 0.0


def test_automatic_round_waits_for_the_agreement_curve_to_saturate() -> None:
    from types import SimpleNamespace

    from terraseg.training.adapt import ActiveConfig, AdaptConfig, AdaptTask, QueryCallback

    acfg = AdaptConfig(source="x", active=ActiveConfig(strategy="entropy", at=[0.0], auto_rounds=1, auto_every=2))
    rounds: list[dict] = []
    calls: list[int] = []

    class Ext:
        progress = False
        state_dir = Path("unused")
        awaiting_labels = None

        def __init__(self) -> None:
            self.acfg, self.task = acfg, AdaptTask()

        def read_state(self) -> dict:
            return {"rounds": list(rounds)}

        def write_state(self, state: dict) -> None:
            rounds[:] = state["rounds"]

        def query_round(self, model: object, k: int, step: int) -> dict:
            calls.append(step)
            return {"round": k, "step": step, "queried_total": 1, "in_view": 100, "labelled_points": 1}

    cb = QueryCallback(Ext())  # type: ignore[arg-type]
    trainer = SimpleNamespace(global_step=0, max_steps=1000, should_stop=False)
    module = SimpleNamespace(model=None, log=lambda *a, **k: None)
    cb.on_train_start(trainer, module)
    assert calls == [0]  # the fixed round at step 0
    level = 0.0
    for step in range(1, 61):
        level = 80 * (1 - np.exp(-step / 6))  # agreement rising, then flat
        n = int(level)
        assert cb.agreement is cb.ext.task.agreement
        cb.agreement["2d"] = torch.tensor([[n, 100 - n], [0, 0]])
        cb.agreement["3d"] = torch.tensor([[n, 100 - n], [0, 0]])
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, step)
        if len(calls) == 2:
            break
    assert len(calls) == 2, "the automatic round never came"
    assert calls[1] >= 2 * 6  # at least 6 curve points (one every auto_every = 2 steps) before a decision
    assert [r["step"] for r in rounds] == calls and cb.curves == {}  # the curve restarts after a round
    state = cb.state_dict()  # saved in last.ckpt: curves and the running agreement counts
    assert set(state) == {"curves", "agreement"}
