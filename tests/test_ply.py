"""PLY files: binary and ASCII round trips, dtypes, hand-written files as other tools write them,
labelled clouds coloured by the ontology, and clear errors for malformed or truncated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terraseg.errors import DataError
from terraseg.io.ply import read_ply, write_labeled_ply, write_ply
from terraseg.ontology import get_ontology


def cloud(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0, 20, (n, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    labels = rng.integers(0, 20, n).astype(np.uint16)
    return xyz, colors, labels


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip(tmp_path: Path, binary: bool) -> None:
    xyz, colors, labels = cloud()
    inten = np.linspace(0, 1, len(xyz), dtype=np.float32)
    t = np.linspace(0, 0.1, len(xyz))  # float64 -> double
    ring = np.arange(len(xyz)) % 64  # int64 -> narrowed to a 32-bit type
    path = write_ply(tmp_path / "c.ply", xyz, labels=labels, colors=colors,
                     fields={"intensity": inten, "time": t, "ring": ring}, binary=binary)
    assert path == tmp_path / "c.ply" and [p.name for p in tmp_path.iterdir()] == ["c.ply"]
    head = path.read_bytes()[:400].decode("ascii", errors="replace")
    assert ("binary_little_endian 1.0" if binary else "format ascii 1.0") in head
    got = read_ply(path)
    assert list(got) == ["x", "y", "z", "red", "green", "blue", "label", "intensity", "time", "ring"]
    np.testing.assert_array_equal(np.stack([got["x"], got["y"], got["z"]], axis=1), xyz)  # exact, %.9g too
    np.testing.assert_array_equal(np.stack([got["red"], got["green"], got["blue"]], axis=1), colors)
    np.testing.assert_array_equal(got["label"], labels)
    np.testing.assert_array_equal(got["intensity"], inten)
    np.testing.assert_array_equal(got["time"], t)
    np.testing.assert_array_equal(got["ring"], ring)
    assert got["x"].dtype == np.float32 and got["red"].dtype == np.uint8 and got["label"].dtype == np.uint16
    assert got["time"].dtype == np.float64 and got["ring"].dtype == np.int32
    if binary:  # header + packed records: 3*4 + 3 + 2 + 4 + 8 + 4 bytes per point
        body = path.read_bytes().split(b"end_header\n", 1)[1]
        assert len(body) == len(xyz) * 33


def test_float64_xyz_and_empty_cloud(tmp_path: Path) -> None:
    xyz = np.array([[4.5e5, 5.4e6, 120.123456789]])  # UTM-sized coordinates keep their precision
    got = read_ply(write_ply(tmp_path / "d.ply", xyz))
    assert got["x"].dtype == np.float64 and got["z"][0] == 120.123456789
    for binary in (True, False):
        empty = read_ply(write_ply(tmp_path / f"e{binary}.ply", np.zeros((0, 3), np.float32), binary=binary))
        assert set(empty) == {"x", "y", "z"} and empty["x"].shape == (0,)


def test_reads_files_written_by_other_tools(tmp_path: Path) -> None:
    # ASCII with comments, a face element after the vertices, and long type names
    ascii_ply = (b"ply\nformat ascii 1.0\ncomment made by hand\nobj_info x\nelement vertex 3\n"
                 b"property float32 x\nproperty float32 y\nproperty float32 z\nproperty uint8 red\n"
                 b"element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                 b"0 0 0 255\n1.5 0 -2 0\n0 1e-3 0 7\n3 0 1 2\n")
    (tmp_path / "a.ply").write_bytes(ascii_ply)
    got = read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(got["x"], [0, 1.5, 0])
    np.testing.assert_allclose(got["y"], [0, 0, 1e-3])
    assert got["red"].tolist() == [255, 0, 7] and got["red"].dtype == np.uint8
    # big-endian binary with a scalar element before the vertices, CRLF header ending
    before = np.array([(1, 2.0)], dtype=[("a", ">i4"), ("b", ">f8")])
    verts = np.array([(1.0, 2.0, 3.0, -4), (5.0, 6.0, 7.0, 9)],
                     dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("label", ">i2")])
    head = (b"ply\r\nformat binary_big_endian 1.0\r\nelement camera 1\r\nproperty int a\r\nproperty double b\r\n"
            b"element vertex 2\r\nproperty float x\r\nproperty float y\r\nproperty float z\r\n"
            b"property short label\r\nend_header\r\n")
    (tmp_path / "b.ply").write_bytes(head + before.tobytes() + verts.tobytes())
    got = read_ply(tmp_path / "b.ply")
    assert got["z"].tolist() == [3.0, 7.0] and got["label"].tolist() == [-4, 9] and got["label"].dtype == np.int16


def test_write_labeled_ply_uses_ontology_palette(tmp_path: Path) -> None:
    onto = get_ontology("rellis3d")
    ids = onto.ids[[0, 1, 2, 1]]
    pts = np.array([[1, 0, 0, 0.5], [0, 1, 0, 0.25], [0, 0, 1, 1.0], [1, 1, 1, 0.0]], dtype=np.float32)
    got = read_ply(write_labeled_ply(tmp_path / "l.ply", pts, ids, "rellis3d"))
    rgb = np.stack([got["red"], got["green"], got["blue"]], axis=1)
    np.testing.assert_array_equal(rgb, onto.palette[ids])
    np.testing.assert_array_equal(got["label"], ids)
    np.testing.assert_array_equal(got["intensity"], pts[:, 3])
    bad = ids.copy()
    bad[2] = onto.max_id + 1
    with pytest.raises(DataError, match=r"l2\.ply"):
        write_labeled_ply(tmp_path / "l2.ply", pts, bad, onto)
    assert not (tmp_path / "l2.ply").exists()


def test_write_errors_leave_no_file(tmp_path: Path) -> None:
    xyz = np.zeros((4, 3), np.float32)
    cases = [
        ({"colors": np.zeros((4, 4), np.uint8)}, r"colors must be \(4, 3\) RGB"),
        ({"colors": np.full((4, 3), 300)}, "colors must be uint8"),
        ({"labels": np.zeros(4, np.float32)}, "labels must be integers"),
        ({"fields": {"bad name": np.zeros(4)}}, "without whitespace"),
        ({"fields": {"x": np.zeros(4)}}, "'x' is given twice"),
        ({"fields": {"t": np.zeros(5)}}, r"field 't' must have shape \(4,\)"),
        ({"fields": {"big": np.array([0, 1, 2, 2**40])}}, "do not fit a 32-bit PLY integer"),
        ({"fields": {"s": np.array(["a"] * 4)}}, "PLY cannot store"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(DataError, match=msg):
            write_ply(tmp_path / "w.ply", xyz, **kwargs)
    with pytest.raises(DataError, match=r"xyz must be an \(N, 3\)"):
        write_ply(tmp_path / "w.ply", np.zeros((4, 2)))
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_malformed_files(tmp_path: Path) -> None:
    xyz, colors, labels = cloud(100)
    good = write_ply(tmp_path / "g.ply", xyz, colors=colors, labels=labels).read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(good[:-7])
    with pytest.raises(DataError, match=r"cut\.ply: truncated PLY data: 100 vertices of 17 bytes"):
        read_ply(cut)
    asc = write_ply(tmp_path / "ga.ply", xyz, binary=False).read_bytes()
    cut.write_bytes(asc[:asc.rindex(b"\n", 0, len(asc) - 1) + 1])  # drop the last line
    with pytest.raises(DataError, match="100 vertex lines expected, found 99"):
        read_ply(cut)
    cut.write_bytes(asc.replace(b"end_header\n", b"end_header\n1 2\n", 1)[:len(asc)])
    with pytest.raises(DataError, match=r"vertex 0 \(line 1 of the data\) has 2 values, the header declares 3"):
        read_ply(cut)
    bad = tmp_path / "bad.ply"
    header_cases = [
        (b"PK\x03\x04", "not a PLY file"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "no 'end_header' line"),
        (b"ply\nelement vertex 1\nproperty float x\nend_header\n0\n", "no 'format' line"),
        (b"ply\nformat binary_middle_endian 1.0\nend_header\n", "line 2 .* unknown format"),
        (b"ply\nformat ascii 1.0\nproperty float x\nend_header\n", "property before any element"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n0\n",
         "unknown property type 'float128'"),
        (b"ply\nformat ascii 1.0\nelement vertex many\nend_header\n", r"the vertex count 'many' is not a number"),
        (b"ply\nformat ascii 1.0\nelement vertex -3\nend_header\n", r"the vertex count '-3' is negative"),
        (b"ply\nformat ascii 1.0\nelement vertex\nend_header\n", r"expected 'element <name> <count>'"),
        (b"ply\nformat ascii 1.0\nelement face 1\nproperty float x\nend_header\n0\n", "has no 'vertex' element"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar int idx\nend_header\n1 0\n",
         "list properties, which are not supported in the vertex"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty uchar r\nend_header\n256\n",
         "property 'r' of vertex 0 is 256, not a valid uchar"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\nabc\n", "not a number"),
    ]
    for data, msg in header_cases:
        bad.write_bytes(data)
        with pytest.raises(DataError, match=r"bad\.ply: .*" + msg):
            read_ply(bad)
    with pytest.raises(DataError, match=r"missing\.ply: cannot read PLY file"):
        read_ply(tmp_path / "missing.ply")


@pytest.mark.realdata
def test_real_rellis_scan_labeled_round_trip(shared_data: Path, tmp_path: Path) -> None:
    from terraseg.io.scans import read_bin, read_label

    scan, label = shared_data / "rellis3d" / "000104.bin", shared_data / "rellis3d" / "000104.label"
    if not (scan.is_file() and label.is_file()):
        pytest.skip(f"real scan {scan} not found (the ../shared/data checkout is absent)")
    pts = read_bin(scan)
    sem, _ = read_label(label, len(pts))
    path = write_labeled_ply(tmp_path / "000104.ply", pts, sem, "rellis3d-raw")
    assert path.stat().st_size == len(pts) * (4 * 4 + 3 + 2) + len(path.read_bytes().split(b"end_header\n")[0]) + 11
    got = read_ply(path)
    np.testing.assert_array_equal(np.stack([got[k] for k in ("x", "y", "z", "intensity")], axis=1), pts)
    np.testing.assert_array_equal(got["label"], sem)
    onto = get_ontology("rellis3d-raw")
    rgb = np.stack([got["red"], got["green"], got["blue"]], axis=1)
    np.testing.assert_array_equal(rgb, onto.palette[sem])
