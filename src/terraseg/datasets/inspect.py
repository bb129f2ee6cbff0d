"""``terraseg inspect``: per-split frame counts, class frequencies and class weights in one pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terraseg.datasets.base import SPLITS, FrameDataset
from terraseg.datasets.registry import detect_kind, open_dataset
from terraseg.datasets.stats import ClassStats, plot_class_frequencies, save_class_stats
from terraseg.errors import DataError
from terraseg.progress import ProgressBar


@dataclass
class InspectResult:
    """What :func:`inspect_dataset` found and wrote."""

    kind: str
    frames: dict[str, int]
    stats: dict[str, ClassStats] = field(default_factory=dict)  # modality -> stats
    files: dict[str, Path] = field(default_factory=dict)


def _split_datasets(root: Path, kind: str, splits: list[str] | None, kwargs: dict[str, Any]) -> dict[str, FrameDataset]:
    wanted = splits or list(SPLITS)
    out: dict[str, FrameDataset] = {}
    for s in wanted:
        try:
            ds = open_dataset(root, kind, split=s, **kwargs)
        except DataError:
            if splits:  # the user asked for this split explicitly
                raise
            continue
        if len(ds):
            out[s] = ds
    if not out and not splits:
        ds = open_dataset(root, kind, split="all", **kwargs)
        out["all"] = ds
    if not any(len(d) for d in out.values()):
        raise DataError(f"{root}: no frames found ({kind} layout)")
    return out


def inspect_dataset(root: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, kind: str = "auto",
                    splits: list[str] | None = None, progress: bool = True, **kwargs: Any) -> InspectResult:
    """Stream over a dataset once and collect class statistics per modality (image / points).

    Writes ``class_stats_<modality>.json`` (counts, frequencies, ENet / median / inverse-sqrt
    weights, readable with :func:`terraseg.datasets.stats.load_class_weights`) and
    ``class_frequencies_<modality>.png`` into ``out_dir`` when given.
    """
    r = Path(root)
    k = detect_kind(r) if kind == "auto" else kind
    per_split = _split_datasets(r, k, splits, kwargs)
    total = sum(len(d) for d in per_split.values())
    stats: dict[str, ClassStats] = {}
    with ProgressBar(total, f"inspecting {r.name}", enabled=progress) as bar:
        for split, ds in per_split.items():
            onto = ds.ontology
            for frame in ds:
                for modality, labels in (("image", frame.image_labels), ("points", frame.point_labels)):
                    if labels is None:
                        continue
                    if onto is None:
                        raise DataError(f"{r}: labels found but the dataset has no ontology (pass one)")
                    st = stats.setdefault(modality, ClassStats(onto, modality=modality))  # type: ignore[arg-type]
                    st.update(frame, split)
                for st in stats.values():  # frames without labels of a modality still count as frames
                    lab = frame.image_labels if st.modality == "image" else frame.point_labels
                    if lab is None:
                        st.update_labels(None, split)
                bar.advance()
    result = InspectResult(kind=k, frames={s: len(d) for s, d in per_split.items()}, stats=stats)
    if out_dir is not None:
        out = Path(out_dir)
        for modality, st in stats.items():
            result.files[f"stats_{modality}"] = save_class_stats(st, out / f"class_stats_{modality}.json")
            result.files[f"plot_{modality}"] = plot_class_frequencies(
                st, out / f"class_frequencies_{modality}.png", title=f"{r.name}: {st.ontology.name} ({modality})")
    return result
