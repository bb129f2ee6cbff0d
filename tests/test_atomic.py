"""Atomic output files: nothing under the final name on failure, and the permissions of a plain
``open()`` (umask, or the replaced file's mode) instead of mkstemp's owner-only 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from terraseg.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_new_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        out = atomic_write_text(tmp_path / "a" / "report.md", "hello")
        assert out.read_text() == "hello" and _mode(out) == 0o640
        os.umask(0o022)
        out2 = atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
        assert _mode(out2) == 0o644
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "report.md"]  # no temporaries left


def test_a_replaced_file_keeps_its_mode_even_read_only(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pth"
    target.write_bytes(b"old")
    target.chmod(0o444)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o444
    target.chmod(0o600)
    atomic_write_bytes(target, b"newer")
    assert _mode(target) == 0o600


def test_failure_leaves_the_original_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"partial": ')
            assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.json")
            raise RuntimeError("boom")
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
