"""Integrity of stored weights: checksums recorded at save time, checked at load time.

A file damaged in copying or on disk (a block of garbage in the middle, a sector of zeros) is
usually still a readable checkpoint: ``torch.load`` does not check the CRC-32 of each tensor
record, and an ONNX file's weights are raw bytes. Such a model loads silently and predicts
nonsense (class 0 everywhere). Three checks catch it:

- :func:`weights_digest`: a SHA-256 over every tensor's name, dtype, shape and bytes (names in
  sorted order). :func:`~terraseg.models.surgery.save_checkpoint` records it and
  :func:`~terraseg.models.surgery.read_checkpoint` recomputes it; the ONNX exporters record a
  digest of the graph's weights (:mod:`terraseg.inference.onnx_integrity`).
- :func:`verify_zip_crcs`: the CRC-32 that ``torch.save`` writes for each record of its zip
  container, checked for every ``.pth`` / ``.ckpt`` read (so also for files written before
  checksums were recorded, and for Lightning checkpoints).
- :func:`check_finite`: NaN or infinite weights are refused (a corrupt file, or a run that diverged).

Each raises :class:`~terraseg.errors.DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from terraseg.errors import DataError

DIGEST_ALGORITHM = "sha256"
#: Version of the byte layout hashed by :func:`weights_digest` / :func:`array_digest`.
DIGEST_SCHEME = 1
CORRUPT_HINT = "the file is damaged (an interrupted copy or a disk error); copy it again or use another checkpoint"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's elements as bytes in row-major order (native byte order)."""
    t = t.detach().cpu()
    if t.is_quantized:
        t = t.int_repr()
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def array_digest(items: Iterable[tuple[str, str, tuple[int, ...], memoryview | bytes]]) -> str:
    """SHA-256 (hex) over ``(name, dtype, shape, bytes)`` records, taken in the order given."""
    h = hashlib.sha256()
    for name, dtype, shape, data in items:
        h.update(f"{name}\0{dtype}\0{','.join(map(str, shape))}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every tensor's name, dtype, shape and bytes, names sorted.

    The same weights give the same digest whatever device or memory layout they have.
    """
    names = sorted(k for k, v in state_dict.items() if isinstance(v, torch.Tensor))
    return array_digest((k, str(state_dict[k].dtype).replace("torch.", ""), tuple(state_dict[k].shape),
                         _tensor_bytes(state_dict[k])) for k in names)


def non_finite(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> list[tuple[str, int, int]]:
    """``(name, non-finite count, size)`` of every floating-point tensor holding NaN or inf."""
    bad = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
                continue
            n = int((~torch.isfinite(t)).sum())
            size = t.numel()
        else:
            a = np.asarray(t)
            if a.dtype.kind not in "fc" or a.size == 0:
                continue
            n = int((~np.isfinite(a)).sum())
            size = a.size
        if n:
            bad.append((str(name), n, size))
    return bad


def check_finite(tensors: Mapping[str, torch.Tensor | np.ndarray], where: str) -> None:
    """Raise DataError naming ``where`` and the first tensors when any weight is NaN or infinite."""
    bad = non_finite(tensors)
    if not bad:
        return
    shown = ", ".join(f"{n} ({k} of {s})" for n, k, s in bad[:4]) + (f", ... (+{len(bad) - 4} tensors)"
                                                                     if len(bad) > 4 else "")
    raise DataError(f"{where}: {len(bad)} weight tensor(s) hold NaN or infinite values: {shown}; the file is "
                    "damaged, or the run that wrote it diverged (try an earlier checkpoint or a lower learning rate)")


def verify_zip_crcs(path: str | os.PathLike[str]) -> bool:
    """Check the CRC-32 of every record of a zip-format ``torch.save`` file.

    Records whose stored CRC is 0 are skipped (``torch.save`` can be told not to compute them).

    Returns:
        True when the file is a zip archive and was checked; False when it is not a zip file
        (a legacy ``torch.save`` file, or not a checkpoint at all: the caller's reader decides).

    Raises:
        DataError: a record's bytes do not match its CRC, or a record cannot be read (truncated).
    """
    p = Path(path)
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head == b"PK\x03\x04":  # a zip file whose directory (at its end) is missing
            raise DataError(f"{p}: truncated (the zip container's directory at the end of the file is missing); "
                            f"{CORRUPT_HINT}")
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                crc = 0
                with zf.open(info) as fh:  # zipfile itself raises BadZipFile on a CRC mismatch
                    while chunk := fh.read(1 << 24):
                        crc = zlib.crc32(chunk, crc)
                if crc != info.CRC:  # pragma: no cover - zipfile raises first
                    raise zipfile.BadZipFile(f"bad CRC-32 for file {info.filename!r}")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        record = str(exc).split("file ")[-1].strip("'\"") if "CRC" in str(exc) else ""
        record = record.split("/", 1)[-1]  # drop the archive's folder name (the file name at save time)
        what = f"record {record!r} fails its CRC-32 check" if record else f"unreadable zip container ({exc})"
        raise DataError(f"{p}: {what}; {CORRUPT_HINT}") from None
    return True


__all__ = [
    "CORRUPT_HINT",
    "DIGEST_ALGORITHM",
    "DIGEST_SCHEME",
    "array_digest",
    "check_finite",
    "non_finite",
    "verify_zip_crcs",
    "weights_digest",
]
