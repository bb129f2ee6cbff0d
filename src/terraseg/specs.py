"""Short ``key=value`` option texts (``--tta "scales=0.75,1 flip=true"``, ``--window slide crop=512``).

Ground floor: used by the camera and LiDAR test-time augmentation and window configs
(:mod:`terraseg.models.image.windows`, :mod:`terraseg.models.points.tta`), which training and
inference both read. Every parser raises :class:`~terraseg.errors.ConfigError` naming ``where``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from terraseg.errors import ConfigError

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def parse_bool(value: Any, where: str) -> bool:
    """``True`` / ``"yes"`` / ``1`` -> True, ``False`` / ``"off"`` / ``0`` -> False, anything else an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def spec_items(spec: Any, where: str) -> dict[str, Any]:
    """``"a=1 b=2"`` / ``"a=1;b=2"`` / ``["a=1", "b=2"]`` / a mapping -> ``{key: value}``.

    Keys are lower case with ``-`` read as ``_``; a bare word (no ``=``) maps to None (a mode
    name or a flag). A key given twice is an error.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k).strip().lower().replace("-", "_"): v for k, v in spec.items()}
    if isinstance(spec, str):
        tokens = [t for t in re.split(r"[\s;]+", spec.strip()) if t]
    elif isinstance(spec, Iterable):
        tokens = []
        for item in spec:
            if not isinstance(item, str):
                raise ConfigError(f"{where}: expected 'key=value' strings, got {item!r}")
            tokens += [t for t in re.split(r"[\s;]+", item.strip()) if t]
    else:
        raise ConfigError(f"{where}: expected 'key=value' text, a list of them or a mapping, got {spec!r}")
    out: dict[str, Any] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep:
            out[key.strip().lower()] = None  # a bare word (a mode name, or a flag)
            continue
        key = key.strip().lower().replace("-", "_")
        if not key:
            raise ConfigError(f"{where}: empty key in {tok!r}")
        if key in out:
            raise ConfigError(f"{where}: {key!r} given twice")
        out[key] = value.strip()
    return out


def parse_numbers(raw: Any, where: str, what: str) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` / ``[0.75, 1]`` / ``1`` -> a tuple of floats (an error for anything else)."""
    values = [p for p in re.split(r"[,\s]+", raw.strip()) if p] if isinstance(raw, str) else raw
    if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, bool):
        values = [values]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {what} must be numbers, got {raw!r}") from None


def parse_size(value: Any, where: str) -> tuple[int, int]:
    """``512`` / ``"512"`` -> (512, 512); ``"512x1024"`` / ``"512,1024"`` / ``[512, 1024]`` -> (H, W)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        parts: list[Any] = [value, value]
    elif isinstance(value, str):
        parts = [p for p in re.split(r"[x,\s*]+", value.strip().lower()) if p]
        if len(parts) == 1:
            parts = parts * 2
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f"{where}: expected a size H x W, got {value!r}")
    if len(parts) != 2:
        raise ConfigError(f"{where}: expected a size 'HxW' (height x width), got {value!r}")
    try:
        h, w = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ConfigError(f"{where}: size {value!r} must be whole numbers 'HxW'") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{where}: size {value!r} must be positive")
    return h, w
