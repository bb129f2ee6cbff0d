"""Building cross-modal models: from network names (recipes) or from a checkpoint's spec."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from terraseg.errors import ConfigError
from terraseg.models.fusion.model import CrossModalModel
from terraseg.models.fusion.sampling import SamplingMode
from terraseg.ontology import Ontology


def build_point_net(spec: Mapping[str, Any]) -> nn.Module:
    """A point network from its ``spec`` (``arch``, ``num_classes``, ``in_channels``, ``preset`` and
    config fields), as stored in checkpoints; unknown presets rebuild as ``custom``."""
    from terraseg.models.points import PRESETS, build_point_model

    s = dict(spec)
    arch = str(s.pop("arch"))
    num_classes = int(s.pop("num_classes"))
    in_channels = s.pop("in_channels", None)
    preset = str(s.pop("preset", "custom"))
    known = PRESETS.get(arch, {})
    return build_point_model(arch, num_classes, in_channels=in_channels,
                             preset=preset if preset in known else "custom", **s)


def build_fusion_model(net2d: Mapping[str, Any], net3d: Mapping[str, Any], num_classes: int, *,
                       ontology: Ontology | None = None, sampling: SamplingMode = "bilinear", mimicry: bool = True,
                       weights_2d: str | os.PathLike[str] | None = None,
                       weights_3d: str | os.PathLike[str] | None = None,
                       source_ontology: Any = None, verbose: bool = False) -> CrossModalModel:
    """A :class:`CrossModalModel` from the two networks' descriptions.

    Args:
        net2d: ``build_image_model`` arguments: ``arch`` and optionally ``encoder``, ``pretrained``,
            ``options`` (a mapping of architecture options) or the options themselves. The aux
            head is off (cross-modal training reads the main classifier only).
        net3d: ``build_point_model`` arguments: ``arch`` and optionally ``preset``,
            ``in_channels``, ``options`` or config fields.
        num_classes: classes of both networks (``ontology.max_id + 1``).
        ontology: the label ontology (stored on the model and its checkpoints).
        sampling, mimicry: see :class:`CrossModalModel`.
        weights_2d, weights_3d: checkpoints of a camera / LiDAR model to start each network from
            (loaded with class remapping, e.g. the source-only models of an adaptation).
        source_ontology: the ontology of those checkpoints when they do not say.

    Raises:
        ConfigError: unknown architectures or options, or networks that cannot be combined.
    """
    from terraseg.models.image import build_image_model
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import load_weights

    d2 = dict(net2d)
    arch2 = d2.pop("arch", None)
    if not arch2:
        raise ConfigError("the 2D network needs an arch (e.g. litefpn)")
    opts2 = dict(d2.pop("options", None) or {})
    enc = d2.pop("encoder", None)
    pretrained = bool(d2.pop("pretrained", False))
    d2.pop("num_classes", None)
    d2.pop("aux", None)
    d2.pop("in_channels", None)
    model2d = build_image_model(str(arch2), enc, num_classes, ontology=ontology, pretrained=pretrained, aux=False,
                                **{**d2, **opts2})
    d3 = dict(net3d)
    arch3 = d3.pop("arch", None)
    if not arch3:
        raise ConfigError("the 3D network needs an arch (e.g. randlanet)")
    opts3 = dict(d3.pop("options", None) or {})
    preset = str(d3.pop("preset", "default"))
    in_ch = d3.pop("in_channels", None)
    d3.pop("num_classes", None)
    model3d = build_point_model(str(arch3), num_classes, in_channels=in_ch, preset=preset, **{**d3, **opts3})
    model3d.ontology = ontology
    if weights_2d:
        model2d.load_report = load_weights(model2d, weights_2d, source_ontology=source_ontology,
                                           target_ontology=ontology, verbose=verbose)
    if weights_3d:
        model3d.load_report = load_weights(model3d, weights_3d, source_ontology=source_ontology,  # type: ignore[attr-defined]
                                           target_ontology=ontology, verbose=verbose)
    model = CrossModalModel(model2d, model3d, sampling=sampling, mimicry=mimicry)
    model.ontology = ontology
    return model


def fusion_model_from_spec(spec: Mapping[str, Any], ontology: Ontology | None = None) -> CrossModalModel:
    """Rebuild the (untrained) model of a checkpoint's spec (``arch: fusion``)."""
    from terraseg.models.image import build_image_model

    s2 = dict(spec.get("net2d") or {})
    s3 = dict(spec.get("net3d") or {})
    if "arch" not in s2 or "arch" not in s3:
        raise ConfigError("a fusion model spec needs 'net2d' and 'net3d' with their archs")
    model2d = build_image_model(s2.pop("arch"), s2.pop("encoder", None), s2.pop("num_classes", None),
                                ontology=ontology, **s2)
    model3d = build_point_net(s3)
    model3d.ontology = ontology
    model = CrossModalModel(model2d, model3d, sampling=spec.get("sampling", "bilinear"),
                            mimicry=bool(spec.get("mimicry", True)))
    model.ontology = ontology
    return model
