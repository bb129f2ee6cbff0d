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
from terraseg.ontology.labelmap import LabelMap
from terraseg.ontology.registry import builtin_map_path, get_ontology, list_label_maps, list_ontologies

__all__ = [
    "ClassInfo",
    "LabelMap",
    "Ontology",
    "builtin_map_path",
    "color_hex",
    "decode_colors",
    "encode_colors",
    "get_ontology",
    "list_label_maps",
    "list_ontologies",
    "parse_color",
]
