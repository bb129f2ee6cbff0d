"""Colour masks: encode class ids as RGB images and decode RGB images back to ids."""

from __future__ import annotations

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.ontology.core import Ontology, color_hex
from terraseg.ontology.registry import get_ontology


def encode_colors(ids: np.ndarray, ontology: Ontology | str, source: str = "labels") -> np.ndarray:
    """Map an (...) array of class ids to an (..., 3) uint8 RGB array with the ontology palette.

    Ids that are not classes of the ontology raise :class:`DataError` naming ``source``.
    """
    onto = get_ontology(ontology)
    arr = np.asarray(ids)
    onto.check_ids(arr, source=source)
    return onto.palette[arr]


def _pack(rgb: np.ndarray) -> np.ndarray:
    """Pack (..., 3) uint8 RGB into (...) uint32 keys ``r << 16 | g << 8 | b``."""
    c = rgb.astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def decode_colors(rgb: np.ndarray, ontology: Ontology | str, unknown: str | int = "error",
                  source: str = "colour mask", *, any_fill_id: bool = False) -> np.ndarray:
    """Map an (H, W, 3) RGB colour mask to an (H, W) array of class ids.

    Args:
        unknown: what to do with colours that are not in the palette. ``"error"`` (default)
            raises :class:`DataError` saying how many pixels and which colours; ``"void"`` maps
            them to the ontology's void class; an int maps them to that id (a class id of the
            ontology, unless ``any_fill_id``).
        source: the file name for error messages.
        any_fill_id: accept any int ``unknown`` in 0..65535, also one that is not a class (an
            ignore id such as 255); the result is uint16 when the id does not fit the ontology's dtype.
    """
    onto = get_ontology(ontology)
    if not onto.colors_unique:
        raise ConfigError(f"ontology {onto.name!r} reuses colours across classes, so colour masks cannot "
                          "be decoded unambiguously; use id masks")
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise DataError(f"{source}: colour mask must have shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise DataError(f"{source}: colour mask values must be integers in 0..255 (dtype {arr.dtype})")
        arr = arr.astype(np.uint8)
    keys = _pack(arr[..., :3])
    pal_keys = _pack(np.array([c.color for c in onto.classes], dtype=np.uint8))
    order = np.argsort(pal_keys)
    sorted_keys, sorted_ids = pal_keys[order], onto.ids[order]
    pos = np.searchsorted(sorted_keys, keys)
    pos_c = np.minimum(pos, len(sorted_keys) - 1)
    found = sorted_keys[pos_c] == keys
    out = sorted_ids.astype(onto.label_dtype)[pos_c]
    if not found.all():
        if unknown == "error":
            bad_keys, counts = np.unique(keys[~found], return_counts=True)
            top = np.argsort(-counts)[:5]
            listing = ", ".join(
                f"{color_hex(((int(k) >> 16) & 255, (int(k) >> 8) & 255, int(k) & 255))} ({int(n)} px)"
                for k, n in zip(bad_keys[top], counts[top]))
            more = "" if len(bad_keys) <= 5 else f" and {len(bad_keys) - 5} more colours"
            raise DataError(f"{source}: {int((~found).sum())} pixels have colours that are not in ontology "
                            f"{onto.name!r}: {listing}{more} (map unknown colours to void explicitly to accept them)")
        if unknown == "void":
            if len(onto.void_ids) != 1:
                raise ConfigError(f"ontology {onto.name!r} has no single void class to map unknown colours to")
            fill = next(iter(onto.void_ids))
        elif isinstance(unknown, (int, np.integer)) and not isinstance(unknown, bool) and (
                int(unknown) in onto or (any_fill_id and 0 <= int(unknown) <= 65535)):
            fill = int(unknown)
            if fill > np.iinfo(out.dtype).max:
                out = out.astype(np.uint16)
        else:
            raise ConfigError(f"unknown={unknown!r}: expected 'error', 'void' or a class id of {onto.name!r}")
        out[~found] = fill
    return out
