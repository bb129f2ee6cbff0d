"""File formats: label images, LiDAR scans, calibration files and atomic writes."""

from terraseg.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from terraseg.io.images import read_image, write_image
from terraseg.io.labels import read_color_png, read_label_png, write_color_png, write_label_png
from terraseg.io.palette import load_palette, write_palette
from terraseg.io.ply import read_ply, write_labeled_ply, write_ply
from terraseg.io.png import encode_png, write_png
from terraseg.io.scans import SCAN_SUFFIXES, read_bin, read_label, read_ply_scan, read_scan, write_bin, write_label

__all__ = [
    "SCAN_SUFFIXES",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "encode_png",
    "load_palette",
    "read_image",
    "write_image",
    "write_palette",
    "read_bin",
    "read_color_png",
    "read_label",
    "read_label_png",
    "read_ply",
    "read_ply_scan",
    "read_scan",
    "write_bin",
    "write_color_png",
    "write_label",
    "write_label_png",
    "write_labeled_ply",
    "write_ply",
    "write_png",
]
