"""Helpers shared by the benchmark scripts: machine description and per-row peak memory."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
from contextlib import AbstractContextManager
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB, None when unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def maxrss_mb() -> float:
    """Peak resident size of the process so far in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free memory back to the system (glibc ``malloc_trim``),
    so memory freed by an earlier measurement is neither in the next baseline nor silently reused."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory(AbstractContextManager["PeakMemory"]):
    """Peak memory of a block in MiB above the level at its start.

    CPU, Linux: the kernel's resident high-water mark is reset on entry (``/proc/self/clear_refs``),
    so the value is the block's own. Elsewhere ``ru_maxrss``, which never resets: ``peak_mb`` is
    None when the block stays below an earlier peak. CUDA devices: ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.peak_mb: float | None = None
        self.method = ""

    def _cuda(self) -> bool:
        return self.device is not None and getattr(self.device, "type", None) == "cuda"

    def __enter__(self) -> PeakMemory:
        release_free_memory()
        if self._cuda():
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self.exact = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            self.exact = status_mb("VmHWM") is not None
        except OSError:
            pass
        rss = status_mb("VmRSS")
        self.start = rss if (self.exact and rss is not None) else maxrss_mb()
        self.method = "VmHWM (reset per row)" if self.exact else "ru_maxrss"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda():
            import torch

            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        elif self.exact:
            self.peak_mb = (status_mb("VmHWM") or 0.0) - self.start
        else:
            grown = maxrss_mb() - self.start
            self.peak_mb = grown if grown > 0 else None


def pin_cores(n: int) -> list[int] | None:
    """Restrict the process to its first ``n`` CPUs (Linux), so helper threads (k-d trees, ONNX
    Runtime, the runtime's reader / writer) share the cores the timings are for. Returns the CPUs,
    or None when nothing changed (no affinity support, or ``n`` covers them all)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if n >= len(cpus):
        return None
    os.sched_setaffinity(0, cpus[:n])
    return cpus[:n]
