"""Checkpoint surgery: load weights trained on one label set into a model for another.

Generic over any :class:`torch.nn.Module` (2D and 3D models alike)::

    from terraseg.models.surgery import load_weights
    report = load_weights(model, "ade20k_upernet.pth", source_ontology=ade_names, target_ontology="goose")
    print(report)

What :func:`load_weights` does:

1. Reads the checkpoint: a raw state dict, a Lightning checkpoint (``"state_dict"``, keys usually
   prefixed ``model.``), a terraseg checkpoint (:func:`save_checkpoint`, which also stores the
   ontology and the model spec), a dict wrapping a state dict under ``model`` /
   ``model_state_dict`` / ``state_dict`` / ``net``, or a ``.safetensors`` file. Files are read
   with ``torch.load(weights_only=True)``; ``trusted=True`` allows arbitrary pickles.
2. Aligns names: the prefix to strip from the checkpoint (``model.``, ``module.``,
   ``_orig_mod.`` ...) and the prefix to add for the model are chosen automatically as the pair
   that matches most tensor names (or given with ``prefix=``).
3. Copies every tensor whose name and shape match.
4. **Class rows.** Layers with one output channel per class ("class heads": the final classifier
   and auxiliary classifiers) are remapped when the source and target ontologies are known: the
   weight rows and bias entries of classes present in both are copied (matched by class name,
   or through a :class:`~terraseg.ontology.LabelMap` from source to target, where several source
   classes mapping to one target class are averaged). Target classes without a source keep the
   model's fresh initialisation. Channel ``c`` is class id ``c`` (``max_id + 1`` channels), and a
   head may carry extra trailing rows (Mask2Former's "no object") that are copied as they are.
   Class heads are taken from ``class_heads=`` or the model's ``class_heads`` attribute (every
   terraseg model sets it); without either, a tensor counts as a class head when its shape
   differs from the checkpoint's only in dim 0, by exactly the difference in class counts.
5. Everything else (shape mismatch, missing) is left as initialised and listed in the
   :class:`TransferReport`, which also lists unused checkpoint tensors and the class mapping.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_path
from terraseg.models.integrity import (
    CORRUPT_HINT,
    DIGEST_ALGORITHM,
    DIGEST_SCHEME,
    check_finite,
    non_finite,
    verify_zip_crcs,
    weights_digest,
)
from terraseg.ontology import LabelMap, Ontology, get_label_map, get_ontology

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "terraseg-checkpoint"
CHECKPOINT_VERSION = 1
#: Keys under which wrapped checkpoints keep their state dict, in lookup order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "weights", "module")

OntologyLike = Ontology | str | os.PathLike[str] | Sequence[str]


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A checkpoint's tensors and what is known about them.

    Attributes:
        state_dict: tensor name -> tensor (CPU).
        source: the file path, or ``"<state dict>"`` for in-memory input.
        kind: ``"terraseg"``, ``"lightning"``, ``"wrapped:<key>"``, ``"state_dict"``, ``"safetensors"``,
            ``"module"`` (a pickled ``nn.Module``) or ``"hub"`` (weights of a hub model).
        ontology: the label ontology stored in a terraseg checkpoint, else None.
        spec: the model spec stored in a terraseg checkpoint (arguments of the model factory).
        meta: free-form metadata stored in a terraseg checkpoint.
    """

    state_dict: dict[str, torch.Tensor]
    source: str = "<state dict>"
    kind: str = "state_dict"
    ontology: Ontology | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, ontology: OntologyLike | None = None,
                    spec: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a terraseg checkpoint atomically and return its path.

    The file is a ``torch.save`` dict readable with ``weights_only=True``::

        {"format": "terraseg-checkpoint", "version": 1, "model": spec, "ontology": {...} or None,
         "meta": {...}, "state_dict": {name: tensor},
         "checksum": {"algorithm": "sha256", "scheme": 1, "state_dict": "<hex>", "tensors": N}}

    ``checksum`` is :func:`~terraseg.models.integrity.weights_digest` of the state dict;
    :func:`read_checkpoint` recomputes it and refuses a file whose weights changed since.

    Args:
        model: the model; its ``spec`` and ``ontology`` attributes are used when present.
        ontology: the label ontology of the model's outputs (default: ``model.ontology``).
        spec: keyword arguments that rebuild the model (default: ``model.spec``).
        meta: extra plain-Python metadata (epoch, metrics, ...).
    """
    onto = resolve_ontology(ontology) if ontology is not None else getattr(model, "ontology", None)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = non_finite(sd)
    if bad:
        log.warning("%s: %d weight tensor(s) hold NaN or infinite values (%s); the file is written but will be "
                    "refused when read", path, len(bad), ", ".join(n for n, _, _ in bad[:4]))
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": dict(spec if spec is not None else getattr(model, "spec", {}) or {}),
        "ontology": onto.to_dict() if isinstance(onto, Ontology) else None,
        "meta": dict(meta or {}),
        "state_dict": sd,
        "checksum": {"algorithm": DIGEST_ALGORITHM, "scheme": DIGEST_SCHEME, "state_dict": weights_digest(sd),
                     "tensors": sum(isinstance(v, torch.Tensor) for v in sd.values())},
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def read_checkpoint(checkpoint: str | os.PathLike[str] | Mapping[str, Any] | Checkpoint, *,
                    trusted: bool = False) -> Checkpoint:
    """Read any supported checkpoint (see the module docstring) into a :class:`Checkpoint`.

    Integrity (see :mod:`terraseg.models.integrity`): the CRC-32 of every record of a zip-format
    ``torch.save`` file is checked, the weights checksum of a terraseg checkpoint is recomputed
    (files written before checksums were recorded load with a log note), and NaN or infinite
    weights are refused.

    Raises:
        DataError: the file is missing, unreadable, damaged (CRC or checksum mismatch, non-finite
            weights), holds untrusted Python objects (and ``trusted`` is False), or contains no tensors.
    """
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        return _interpret(checkpoint, "<state dict>")
    path = Path(checkpoint)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm
            raise DataError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
        try:
            sd = dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise DataError(f"{path}: not a readable safetensors file ({exc})") from exc
        check_finite(sd, str(path))
        return Checkpoint(sd, str(path), "safetensors")
    verify_zip_crcs(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if trusted or "unsupported global" not in str(exc).lower():
            raise DataError(f"{path}: not a readable PyTorch checkpoint (corrupt, or not written by torch.save)") from exc
        raise DataError(f"{path}: the checkpoint holds Python objects besides tensors, which are not loaded by "
                        "default because unpickling can run code; pass trusted=True if you trust this file") from None
    except Exception as exc:  # zip/EOF/runtime errors from a corrupt or foreign file
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)})") from exc
    if isinstance(obj, nn.Module):
        ck = Checkpoint(dict(obj.state_dict()), str(path), "module")
        check_finite(ck.state_dict, str(path))
        return ck
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return _interpret(obj, str(path))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _tensors_only(d: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _verify_checksum(obj: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Compare a terraseg checkpoint's recorded weights checksum with its tensors."""
    ck = obj.get("checksum")
    if ck is None:
        log.info("%s: no weights checksum recorded (written before terraseg recorded them); "
                 "checked the file's CRCs and that the weights are finite", source)
        return
    if not isinstance(ck, Mapping) or ck.get("algorithm") != DIGEST_ALGORITHM or not isinstance(
            ck.get("state_dict"), str):
        raise DataError(f"{source}: unreadable weights checksum record {ck!r}; {CORRUPT_HINT}")
    if int(ck.get("scheme", 1)) != DIGEST_SCHEME:
        log.warning("%s: weights checksum scheme %s is not %s (a newer terraseg?); not checked", source,
                    ck.get("scheme"), DIGEST_SCHEME)
        return
    if weights_digest(sd) != ck["state_dict"]:
        n = ck.get("tensors")
        count = f" ({len(sd)} tensors, {n} when saved)" if isinstance(n, int) and n != len(sd) else ""
        raise DataError(f"{source}: the weights do not match the checksum recorded when the file was "
                        f"saved{count}; {CORRUPT_HINT}")


def _interpret(obj: Mapping[str, Any], source: str) -> Checkpoint:
    ck = _interpret_unchecked(obj, source)
    if ck.kind == "terraseg":
        _verify_checksum(obj, ck.state_dict, source)
    check_finite(ck.state_dict, source)
    return ck


def _interpret_unchecked(obj: Mapping[str, Any], source: str) -> Checkpoint:
    if obj.get("format") == CHECKPOINT_FORMAT:
        sd = obj.get("state_dict")
        if not isinstance(sd, Mapping):
            raise DataError(f"{source}: terraseg checkpoint without a 'state_dict'")
        onto = None
        if obj.get("ontology"):
            try:
                onto = Ontology.from_dict(obj["ontology"])
            except ConfigError as exc:
                raise DataError(f"{source}: the stored ontology is invalid ({exc})") from exc
        return Checkpoint(_tensors_only(sd), source, "terraseg", onto, dict(obj.get("model") or {}),
                          dict(obj.get("meta") or {}))
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if isinstance(inner, Mapping) and _tensors_only(inner):
            lightning = key == "state_dict" and any("lightning" in str(k) or k in ("epoch", "global_step") for k in obj)
            return Checkpoint(_tensors_only(inner), source, "lightning" if lightning else f"wrapped:{key}")
    sd = _tensors_only(obj)
    if not sd:
        keys = ", ".join(sorted(map(str, obj))[:12])
        raise DataError(f"{source}: no tensors found (top-level keys: {keys or 'none'}); expected a state dict, "
                        f"or a dict with one under {', '.join(repr(k) for k in STATE_DICT_KEYS)}")
    return Checkpoint(sd, source, "state_dict")


# ---------------------------------------------------------------------------------------------- ontologies
def ontology_from_names(names: Sequence[str], name: str = "checkpoint") -> Ontology:
    """An ontology with ids ``0 .. len(names) - 1`` from class names (colours are placeholders).

    Names are normalised for matching: lower case, the first of comma-separated synonyms
    (``"road, route"`` -> ``road``), spaces and dashes to underscores; a name that repeats an
    earlier one gets ``_<id>`` appended.
    """
    from terraseg.ontology import ClassInfo

    seen: set[str] = set()
    classes = []
    for i, raw in enumerate(names):
        n = str(raw).split(",")[0].strip().lower().replace(" ", "_").replace("-", "_") or f"class_{i}"
        if n in seen:
            n = f"{n}_{i}"
        seen.add(n)
        classes.append(ClassInfo(i, n, ((i * 67) % 256, (i * 139) % 256, (i * 211) % 256)))
    return Ontology(name=name, classes=tuple(classes), colors_unique=False)


def resolve_ontology(value: OntologyLike | None) -> Ontology | None:
    """An :class:`Ontology` from an ontology, a built-in name, a YAML path or a list of class names."""
    if value is None or isinstance(value, Ontology):
        return value
    if isinstance(value, (str, os.PathLike)):
        return get_ontology(value)
    if isinstance(value, Sequence):
        return ontology_from_names(list(value))
    raise ConfigError(f"expected an ontology, its name, a YAML path or a list of class names, got {type(value).__name__}")


def _resolve_label_map(value: LabelMap | str | os.PathLike[str] | None) -> LabelMap | None:
    """A LabelMap, its YAML file or ``SOURCE->TARGET`` (a built-in map), see :func:`terraseg.ontology.get_label_map`."""
    return None if value is None else get_label_map(value)


def class_row_pairs(source: Ontology, target: Ontology,
                    label_map: LabelMap | None = None) -> tuple[list[tuple[int, tuple[int, ...]]], list[int]]:
    """Which source class rows initialise which target class rows.

    Returns:
        ``(pairs, new)``: ``pairs`` lists ``(target_id, source_ids)`` for every target class that has
        at least one source class (by equal name, or every non-dropped source class that
        ``label_map`` sends to it); ``new`` lists the target ids without a source.
    """
    by_target: dict[int, list[int]] = {}
    if label_map is not None:
        for c in label_map.source:
            if c.id not in label_map.dropped:
                by_target.setdefault(int(label_map.lut[c.id]), []).append(c.id)
    else:
        for t in target:
            if t.name in source:
                by_target[t.id] = [source[t.name].id]
    pairs: list[tuple[int, tuple[int, ...]]] = []
    new: list[int] = []
    for t in target:
        srcs = tuple(by_target.get(t.id, ()))
        if srcs:
            pairs.append((t.id, srcs))
        else:
            new.append(t.id)
    return pairs, new


# ---------------------------------------------------------------------------------------------- report
@dataclass
class TransferReport:
    """What :func:`load_weights` did. ``print(report)`` gives a readable summary.

    Attributes:
        source: where the weights came from.
        kind: the checkpoint kind (see :class:`Checkpoint`).
        strip_prefix, add_prefix: the name prefixes removed from the checkpoint / added for the model.
        loaded: model tensors copied unchanged.
        remapped: class-head tensors whose class rows were copied by class.
        new: model tensors left as initialised (absent from the checkpoint or of another shape).
        mismatched: name -> (checkpoint shape, model shape) for the ``new`` tensors whose shape differs.
        unused: checkpoint tensors not used (after prefix handling).
        source_ontology, target_ontology: the ontology names, when known.
        class_map: ``(target class, source classes)`` for every class whose rows were copied.
        new_classes: target classes whose rows keep the fresh initialisation.
        notes: warnings (for example class heads that could not be remapped).
    """

    source: str
    kind: str = "state_dict"
    strip_prefix: str = ""
    add_prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    source_ontology: str | None = None
    target_ontology: str | None = None
    class_map: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, max_items: int = 8) -> str:
        """A multi-line human-readable summary (lists are cut after ``max_items`` entries)."""
        def names(items: Sequence[str]) -> str:
            shown = ", ".join(items[:max_items])
            return shown + (f", ... (+{len(items) - max_items})" if len(items) > max_items else "")

        prefix = []
        if self.strip_prefix:
            prefix.append(f"stripped {self.strip_prefix!r}")
        if self.add_prefix:
            prefix.append(f"added {self.add_prefix!r}")
        lines = [f"weights from {self.source} ({self.kind}{'; ' + ', '.join(prefix) if prefix else ''})",
                 f"  loaded   {len(self.loaded):5d} tensors"]
        lines.append(f"  remapped {len(self.remapped):5d} tensors" + (f"  {names(self.remapped)}" if self.remapped else ""))
        if self.remapped or self.class_map:
            lines.append(f"           classes {self.source_ontology} -> {self.target_ontology}: "
                         f"{len(self.class_map)} copied, {len(self.new_classes)} new")
            copied = [t if src == (t,) else f"{t} <- {'+'.join(src)}" for t, src in self.class_map]
            lines.append(f"           copied: {names(copied) or '-'}")
            lines.append(f"           new:    {names(self.new_classes) or '-'}")
        new_desc = [f"{n} {self.mismatched[n][0]}->{self.mismatched[n][1]}" if n in self.mismatched else n
                    for n in self.new]
        lines.append(f"  new      {len(self.new):5d} tensors" + (f"  {names(new_desc)}" if self.new else ""))
        lines.append(f"  unused   {len(self.unused):5d} tensors" + (f"  {names(self.unused)}" if self.unused else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary


# ---------------------------------------------------------------------------------------------- loading
def _prefixes(name: str, depth: int) -> list[tuple[str, str]]:
    """``(prefix, rest)`` splits of a dotted name at its first ``0 .. depth`` dots."""
    out = [("", name)]
    parts = name.split(".")
    for d in range(1, min(depth, len(parts) - 1) + 1):
        p = ".".join(parts[:d]) + "."
        out.append((p, name[len(p):]))
    return out


def align_names(ckpt_keys: Iterable[str], model_keys: Iterable[str], prefix: str | None = None) -> tuple[str, str]:
    """The ``(strip, add)`` prefix pair that maps the most checkpoint names onto model names.

    ``strip`` is removed from checkpoint names and ``add`` put in front; with ``prefix`` given,
    ``strip`` is that prefix (``add`` stays empty). Ties prefer the shortest prefixes.
    """
    if prefix is not None:
        return (prefix if not prefix or prefix.endswith(".") else prefix + "."), ""
    rest_to_adds: dict[str, list[str]] = {}
    for m in model_keys:
        for a, rest in _prefixes(m, 2):
            rest_to_adds.setdefault(rest, []).append(a)
    scores: dict[tuple[str, str], int] = {}
    for c in ckpt_keys:
        for s, rest in _prefixes(c, 3):
            for a in rest_to_adds.get(rest, ()):
                scores[(s, a)] = scores.get((s, a), 0) + 1
    if not scores:
        return "", ""
    return max(scores, key=lambda k: (scores[k], -len(k[0]) - len(k[1])))


def _class_head_keys(model: nn.Module, class_heads: Mapping[str, int] | Iterable[str] | None,
                     model_keys: Iterable[str]) -> dict[str, int] | None:
    """Tensor name -> extra trailing rows, for every tensor of a declared class head (None: undeclared)."""
    heads = class_heads if class_heads is not None else getattr(model, "class_heads", None)
    if heads is None:
        return None
    heads = dict(heads) if isinstance(heads, Mapping) else dict.fromkeys(heads, 0)
    out: dict[str, int] = {}
    for k in model_keys:
        for h, extra in heads.items():
            if k == h or k.startswith(h + "."):
                out[k] = int(extra)
    return out


def _looks_like_class_rows(src: torch.Tensor, dst: torch.Tensor, k_src: int, k_dst: int) -> bool:
    """Shapes differ only in dim 0, by the class counts (plus the same 0 or 1 extra rows)."""
    if src.dim() < 1 or dst.dim() < 1 or src.shape[1:] != dst.shape[1:]:
        return False
    extra = src.shape[0] - k_src
    return extra in (0, 1) and dst.shape[0] - k_dst == extra


def _remap_rows(src: torch.Tensor, dst: torch.Tensor, pairs: Sequence[tuple[int, tuple[int, ...]]],
                k_src: int, k_dst: int) -> torch.Tensor:
    """``dst`` with the rows of ``pairs`` taken from ``src`` (averaged when several) and extra rows copied."""
    out = dst.detach().clone()
    s = src.detach().to(device=out.device, dtype=out.dtype)
    single = [(t, ss[0]) for t, ss in pairs if len(ss) == 1]
    if single:
        t_idx = torch.tensor([t for t, _ in single], dtype=torch.long, device=out.device)
        s_idx = torch.tensor([si for _, si in single], dtype=torch.long, device=out.device)
        out[t_idx] = s[s_idx]
    for t, ss in pairs:
        if len(ss) > 1:
            out[t] = s[list(ss)].mean(dim=0)
    if out.shape[0] > k_dst:
        out[k_dst:] = s[k_src:]
    return out


def load_weights(model: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, Any] | Checkpoint, *,
                 source_ontology: OntologyLike | None = None, target_ontology: OntologyLike | None = None,
                 label_map: LabelMap | str | os.PathLike[str] | None = None,
                 class_heads: Mapping[str, int] | Iterable[str] | None = None, prefix: str | None = None,
                 strict: bool = False, trusted: bool = False, verbose: bool = False) -> TransferReport:
    """Load ``checkpoint`` into ``model`` in place, remapping class rows across ontologies.

    Args:
        model: any module; ``model.class_heads`` and ``model.ontology`` are used when present.
        checkpoint: a file (``.pth``/``.pt``/``.ckpt``/``.safetensors``), a loaded dict, or a
            :class:`Checkpoint`.
        source_ontology: the ontology the checkpoint was trained on (an Ontology, a built-in
            name, a YAML path or a list of class names in id order). Default: the one stored in a
            terraseg checkpoint, else ``label_map.source``.
        target_ontology: the model's ontology. Default: ``model.ontology``, else ``label_map.target``.
        label_map: a :class:`LabelMap` (or its YAML file) from source to target; without it,
            classes are matched by name.
        class_heads: module names whose output channels are classes, or a mapping name -> number
            of extra non-class rows after the class rows (default: ``model.class_heads``).
        prefix: the prefix to strip from checkpoint names (default: chosen automatically).
        strict: raise ConfigError unless every model tensor was loaded or remapped and every
            checkpoint tensor was used. (A checkpoint of which nothing fits is always an error.)
        trusted: allow arbitrary pickled objects in the file (only for files you trust).
        verbose: print the report.

    Returns:
        The :class:`TransferReport`.

    Raises:
        DataError: unreadable checkpoint (see :func:`read_checkpoint`).
        ConfigError: inconsistent ontologies / label map / head sizes, or ``strict`` failures.
    """
    ck = read_checkpoint(checkpoint, trusted=trusted)
    lmap = _resolve_label_map(label_map)
    src_onto = resolve_ontology(source_ontology) or ck.ontology or (lmap.source if lmap else None)
    dst_onto = resolve_ontology(target_ontology) or getattr(model, "ontology", None) or (lmap.target if lmap else None)
    if lmap is not None and src_onto is not None and dst_onto is not None and (
            lmap.source.name != src_onto.name or lmap.target.name != dst_onto.name):
        raise ConfigError(f"label map {lmap.source.name} -> {lmap.target.name} does not match the ontologies "
                          f"{src_onto.name} -> {dst_onto.name}")

    model_sd = model.state_dict()
    strip, add = align_names(ck.state_dict, model_sd, prefix)
    mapped: dict[str, torch.Tensor] = {}
    report = TransferReport(source=ck.source, kind=ck.kind, strip_prefix=strip, add_prefix=add,
                            source_ontology=src_onto.name if src_onto else None,
                            target_ontology=dst_onto.name if dst_onto else None)
    for k, v in ck.state_dict.items():
        if k.startswith(strip) and add + k[len(strip):] in model_sd:
            mapped[add + k[len(strip):]] = v
        else:
            report.unused.append(k)

    heads = _class_head_keys(model, class_heads, model_sd)
    both = src_onto is not None and dst_onto is not None
    k_src = src_onto.max_id + 1 if src_onto else 0
    k_dst = dst_onto.max_id + 1 if dst_onto else 0
    same_classes = both and [(c.id, c.name) for c in src_onto] == [(c.id, c.name) for c in dst_onto]
    pairs, new_ids = class_row_pairs(src_onto, dst_onto, lmap) if both else ([], [])
    if both and lmap is None and not pairs:
        report.notes.append(f"no class names in common between {src_onto.name} and {dst_onto.name}")

    new_sd = dict(model_sd)
    for name, dst in model_sd.items():
        if name not in mapped:
            report.new.append(name)
            continue
        src = mapped[name]
        is_head = heads is not None and name in heads
        extra = heads.get(name, 0) if heads is not None else 0
        if heads is None and both and k_src != k_dst and _looks_like_class_rows(src, dst, k_src, k_dst):
            is_head, extra = True, src.shape[0] - k_src   # auto-detected class head
        if is_head and both and not same_classes:
            if src.shape[1:] != dst.shape[1:]:
                report.new.append(name)
                report.mismatched[name] = (tuple(src.shape), tuple(dst.shape))
                continue
            if src.shape[0] != k_src + extra:
                raise ConfigError(f"{ck.source}: class head tensor {name!r} has {src.shape[0]} rows but the source "
                                  f"ontology {src_onto.name!r} has {k_src} class ids (+{extra} extra rows)")
            if dst.shape[0] != k_dst + extra:
                raise ConfigError(f"model class head tensor {name!r} has {dst.shape[0]} rows but the target ontology "
                                  f"{dst_onto.name!r} has {k_dst} class ids (+{extra} extra rows)")
            new_sd[name] = _remap_rows(src, dst, pairs, k_src, k_dst)
            report.remapped.append(name)
        elif src.shape == dst.shape:
            new_sd[name] = src
            report.loaded.append(name)
        else:
            report.new.append(name)
            report.mismatched[name] = (tuple(src.shape), tuple(dst.shape))
    if report.remapped:
        report.class_map = [(dst_onto.name_of(t), tuple(src_onto.name_of(s) for s in ss)) for t, ss in pairs]
        report.new_classes = [dst_onto.name_of(t) for t in new_ids]
    elif report.mismatched and not both:
        report.notes.append("shape-mismatched tensors were re-initialised; give source_ontology and target_ontology "
                            "to copy the rows of shared classes")
    if heads is None and both and not same_classes and k_src == k_dst and not report.remapped:
        report.notes.append("the ontologies differ but have the same number of ids and the model declares no "
                            "class_heads, so no rows were remapped; pass class_heads=[...]")

    if not report.loaded and not report.remapped:
        ck_ex = next(iter(ck.state_dict), "-")
        model_ex = next(iter(model_sd), "-")
        raise ConfigError(f"{ck.source}: none of the checkpoint's {len(ck.state_dict)} tensors fits the model "
                          f"(checkpoint names like {ck_ex!r}, model names like {model_ex!r}); "
                          "is it for another architecture or encoder?")
    if strict and (report.new or report.unused):
        raise ConfigError(f"{ck.source}: strict loading failed\n{report.summary()}")
    model.load_state_dict(new_sd, strict=True)
    log.info("%s", report.summary())
    if verbose:
        print(report.summary())
    return report


__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "TransferReport",
    "align_names",
    "class_row_pairs",
    "load_weights",
    "ontology_from_names",
    "read_checkpoint",
    "resolve_ontology",
    "save_checkpoint",
]
