"""Label spaces (ontologies), maps between them and colour masks.

>>> from terraseg.ontology import get_ontology, LabelMap
>>> goose = get_ontology("goose")
>>> goose["forest"].id
16
>>> LabelMap.builtin("goose", "traversability")
LabelMap(goose -> traversability)
"""

from terraseg.ontology.colors import decode_colors, encode_colors
from terraseg.ontology.core import ClassInfo, Ontology, color_hex, parse_color
from terraseg.ontology.labelmap import LabelMap, get_label_map
from terraseg.ontology.palette import PALETTE_SUFFIXES, find_palette_file, load_palette
from terraseg.ontology.registry import (
    builtin_map_path,
    get_ontology,
    list_label_maps,
    list_ontologies,
    load_ontology_file,
    looks_like_path,
)

__all__ = [
    "ClassInfo",
    "LabelMap",
    "Ontology",
    "PALETTE_SUFFIXES",
    "builtin_map_path",
    "color_hex",
    "decode_colors",
    "encode_colors",
    "find_palette_file",
    "get_label_map",
    "get_ontology",
    "list_label_maps",
    "list_ontologies",
    "load_ontology_file",
    "load_palette",
    "looks_like_path",
    "parse_color",
]
