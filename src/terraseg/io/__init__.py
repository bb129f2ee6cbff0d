"""File formats: label images and atomic writes."""

from terraseg.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from terraseg.io.labels import read_color_png, read_label_png, write_color_png, write_label_png

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_color_png",
    "read_label_png",
    "write_color_png",
    "write_label_png",
]
