"""The 2D model factory: :func:`build_image_model` and the architecture registry."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terraseg.errors import ConfigError, DataError
from terraseg.models.image.base import ImageSegmenter
from terraseg.models.surgery import (
    Checkpoint,
    OntologyLike,
    TransferReport,
    load_weights,
    read_checkpoint,
    resolve_ontology,
)
from terraseg.ontology import LabelMap

#: File suffixes that make a ``weights`` string a local checkpoint path.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tar")


@dataclass(frozen=True)
class ImageArch:
    """One registered architecture.

    Attributes:
        name: the ``arch`` string of :func:`build_image_model`.
        default_encoder: encoder used when none is given.
        good_for: one line on when to pick it.
        default_aux: whether the auxiliary head is on by default.
        supports_aux: whether an auxiliary head exists at all.
        encoders: ``"smp"`` (any smp encoder or ``tu-<timm model>``) or ``"swin"``.
        options: the extra keyword arguments the architecture accepts.
        requires: optional dependency needed to build it, or None.
    """

    name: str
    default_encoder: str
    good_for: str
    default_aux: bool = False
    supports_aux: bool = True
    encoders: str = "smp"
    options: tuple[str, ...] = ()
    requires: str | None = None


_SMP_COMMON = ("aux_channels",)
_ARCHS: dict[str, ImageArch] = {a.name: a for a in (
    ImageArch("upernet", "tu-convnext_tiny", "strong general-purpose baseline (GOOSE 64-class reference setup); "
              "aux FCN head on stage 3 by default", default_aux=True),
    ImageArch("deeplabv3plus", "resnet50", "sharp boundaries from the stride-4 skip; robust on small datasets"),
    ImageArch("segformer", "mit_b2", "transformer encoder, good accuracy per FLOP, robust to domain shift"),
    ImageArch("fpn", "resnet50", "simple, fast multi-scale decoder; good default for thin structures"),
    ImageArch("litefpn", "tu-mobilenetv3_large_100", "real-time on-robot inference (CPU / ONNX Runtime), stride-8 output "
              "(4 with output_stride=4)",
              options=("channels", "aux_channels", "dropout", "output_stride")),
    ImageArch("acfnet", "tu-efficientnet_b3", "ACF-Net with an EfficientNet encoder (reference 001); class-centre "
              "attention helps large uniform regions; coarse logits as aux", default_aux=True,
              options=("output_stride", "channels", "aspp_rates", "low_level_channels", "dropout")),
    ImageArch("mask2former", "swin-tiny", "mask-classification transformer; needs more data and iterations "
              "(optional 'transformers' dependency)", supports_aux=False, encoders="swin", requires="transformers"),
)}


def list_image_archs() -> list[str]:
    """Names of the 2D architectures, sorted."""
    return sorted(_ARCHS)


def image_arch(arch: str) -> ImageArch:
    """The registry entry of ``arch`` (case and ``-``/``_`` insensitive; ``deeplabv3+`` works)."""
    key = arch.lower().replace("-", "").replace("_", "").replace("+", "plus")
    if key not in _ARCHS:
        close = difflib.get_close_matches(key, list(_ARCHS), n=2)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown image arch {arch!r}{hint}; available: {', '.join(list_image_archs())}")
    return _ARCHS[key]


def describe_image_archs() -> str:
    """A plain-text table: arch, default encoder, what it is good for."""
    rows = [(a.name, a.default_encoder, a.good_for) for a in (_ARCHS[n] for n in list_image_archs())]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{n:<{w0}}  {e:<{w1}}  {g}" for n, e, g in rows)


def list_image_encoders(arch: str | None = None) -> list[str]:
    """Encoder names accepted by ``arch`` (smp encoders by default).

    Any timm model also works with the smp-based archs as ``"tu-<timm name>"`` (e.g.
    ``tu-convnext_tiny``, ``tu-mobilenetv3_large_100``); those are not listed individually.
    """
    if arch is not None and image_arch(arch).encoders == "swin":
        from terraseg.models.image.mask2former import SWIN_ENCODERS

        return list(SWIN_ENCODERS)
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.get_encoder_names())


def _check_encoder(spec: ImageArch, encoder: str) -> None:
    if spec.encoders == "swin":
        names = list_image_encoders(spec.name)
        if encoder not in names:
            raise ConfigError(f"unknown encoder {encoder!r} for arch {spec.name!r}; available: {', '.join(names)}")
        return
    names = list_image_encoders()
    if encoder.startswith("tu-"):
        import timm

        base = encoder[3:].split(".")[0]
        if not timm.is_model(base):
            close = difflib.get_close_matches(base, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join('tu-' + c for c in close)}?)" if close else ""
            raise ConfigError(f"unknown timm encoder {encoder!r}{hint}; 'tu-' takes any name of timm.list_models() "
                              f"({len(timm.list_models())} models); smp encoders: {', '.join(names)}")
        return
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown encoder {encoder!r} for arch {spec.name!r}{hint}; available: {', '.join(names)}, "
                          "or 'tu-<name>' for any timm model (e.g. tu-convnext_tiny)")


def _check_options(spec: ImageArch, options: dict[str, Any]) -> None:
    if spec.encoders == "swin":
        from terraseg.models.image.mask2former import OPTIONS

        allowed = sorted(OPTIONS)
    elif spec.options:
        allowed = sorted(spec.options)
    else:
        from terraseg.models.image.smp_models import smp_arch_options

        allowed = sorted({*smp_arch_options(spec.name), *_SMP_COMMON})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"arch {spec.name!r} does not accept {', '.join(unknown)}; options: {', '.join(allowed)}")


def _is_path(weights: str | os.PathLike[str]) -> bool:
    s = os.fspath(weights)
    return (isinstance(weights, os.PathLike) or Path(s).expanduser().exists() or s.lower().endswith(CHECKPOINT_SUFFIXES)
            or s.startswith(("/", "./", "../", "~")))


def _encoder_weights(spec: ImageArch, encoder: str, tag: str | None) -> Any:
    """The smp ``encoder_weights`` value for an encoder and a weights tag (None: random init)."""
    if tag is None:
        return None
    if encoder.startswith("tu-"):
        if tag not in ("imagenet", "timm", "default"):
            raise ConfigError(f"encoder {encoder!r}: timm weights are chosen in the encoder name "
                              f"('tu-<model>.<pretrained tag>'), so weights={tag!r} is not understood; "
                              "use pretrained=True or weights='imagenet'")
        return True
    import segmentation_models_pytorch as smp

    available = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    if tag == "default":
        tag = "imagenet" if "imagenet" in available else (available[0] if available else None)
    if tag not in available:
        raise ConfigError(f"encoder {encoder!r} has no pretrained weights {tag!r}; available: "
                          f"{', '.join(available) or 'none'}")
    return tag


def _build(spec: ImageArch, encoder: str, num_classes: int, in_channels: int, encoder_weights: Any, aux: bool,
           options: dict[str, Any]) -> ImageSegmenter:
    from terraseg.models.image.acfnet import build_acfnet
    from terraseg.models.image.litefpn import build_litefpn
    from terraseg.models.image.smp_models import SMP_ARCHS, build_smp

    builders: dict[str, Callable[..., ImageSegmenter]] = {"acfnet": build_acfnet, "litefpn": build_litefpn}
    if spec.name in SMP_ARCHS:
        return build_smp(spec.name, encoder, num_classes, in_channels, encoder_weights, aux, **options)
    return builders[spec.name](encoder, num_classes, in_channels, encoder_weights, aux, **options)


def build_image_model(arch: str, encoder: str | None = None, num_classes: int | None = None, *,
                      ontology: OntologyLike | None = None, pretrained: bool = False,
                      weights: str | os.PathLike[str] | None = None, aux: bool | None = None, in_channels: int = 3,
                      source_ontology: OntologyLike | None = None, label_map: LabelMap | str | None = None,
                      trusted: bool = False, verbose: bool = False, **options: Any) -> ImageSegmenter:
    """Build a 2D segmentation model that follows the terraseg output convention.

    See :mod:`terraseg.models.image.base` for the convention: eval mode returns logits
    ``(N, num_classes, H, W)`` at input resolution; train mode returns ``{"out", "aux"}`` when the
    model has an auxiliary head.

    Args:
        arch: one of :func:`list_image_archs`.
        encoder: encoder name (default: the arch's, see :func:`describe_image_archs`): an smp
            encoder (``resnet18``, ``efficientnet-b0``, ``mit_b0`` ...), ``tu-<timm model>``, or
            for Mask2Former ``swin-tiny|small|base|large``.
        num_classes: number of output channels; taken as ``ontology.max_id + 1`` when omitted.
        ontology: the label ontology the model predicts (stored on the model and in its
            checkpoints; used as the target when loading ``weights``).
        pretrained: initialise the encoder with its default ImageNet weights (downloads on first
            use; Mask2Former: the ADE20K semantic checkpoint of the Swin size). ``False`` never
            touches the network.
        weights: a local checkpoint (``.pth``/``.ckpt``/``.safetensors`` ...: loaded with class
            remapping, see :func:`terraseg.models.surgery.load_weights`), a hub id ``"org/name"``
            or a folder written by ``save_pretrained`` (``smp.from_pretrained`` for the smp-based
            archs, ``transformers`` for Mask2Former; loaded with the same remapping), or an
            encoder weights tag (``"imagenet"``, ``"ssl"``, ``"advprop"`` ...). Exclusive with
            ``pretrained``.
        aux: add the auxiliary head (default: the arch's, see :class:`ImageArch`).
        in_channels: input channels (3 for RGB).
        source_ontology: the ontology ``weights`` were trained on, when the checkpoint does not
            say (an Ontology, name, YAML path or list of class names).
        label_map: a LabelMap (or its YAML file) from the weights' ontology to ``ontology``.
        trusted: allow arbitrary pickles in the ``weights`` file.
        verbose: print the weight-loading report.
        **options: architecture options (``decoder_channels``, ``channels``, ``output_stride``,
            ``num_queries`` ...); unknown ones raise ConfigError listing the accepted ones.

    Returns:
        The model (train mode, as ``nn.Module`` construction leaves it). It carries ``spec``,
        ``ontology`` and, when weights were loaded, ``load_report`` (a TransferReport).

    Raises:
        ConfigError: unknown arch / encoder / option, missing optional dependency, inconsistent
            class counts.
        DataError: a weights file that is missing or unreadable.
    """
    spec = image_arch(arch)
    onto = resolve_ontology(ontology)
    if num_classes is None:
        if onto is None:
            raise ConfigError("build_image_model needs num_classes or an ontology")
        num_classes = onto.max_id + 1
    elif onto is not None and num_classes != onto.max_id + 1:
        raise ConfigError(f"num_classes={num_classes} does not match ontology {onto.name!r} "
                          f"({onto.max_id + 1} ids, 0..{onto.max_id})")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    encoder = encoder or spec.default_encoder
    if aux is None:
        aux = spec.default_aux
    if aux and not spec.supports_aux:
        raise ConfigError(f"arch {spec.name!r} has no auxiliary head (aux=True is not supported)")
    _check_encoder(spec, encoder)
    _check_options(spec, options)
    if pretrained and weights is not None:
        raise ConfigError("give either pretrained=True or weights=..., not both")

    checkpoint: str | None = None
    hub_id: str | None = None
    tag: str | None = "default" if pretrained else None
    if weights is not None:
        if _is_path(weights):
            path = Path(os.fspath(weights)).expanduser()
            if path.is_dir():   # a saved hub model (save_pretrained): config.json + weights
                hub_id, tag = str(path), None
            elif not path.is_file():
                raise DataError(f"{path}: weights file not found")
            else:
                checkpoint, tag = str(path), None
        elif "/" in os.fspath(weights):
            hub_id, tag = os.fspath(weights), None
        else:
            tag = os.fspath(weights)

    if spec.encoders == "swin":
        model, hub_state, hub_names, hub_id = _build_mask2former(encoder, num_classes, in_channels, pretrained,
                                                                 hub_id, tag, options)
    else:
        enc_weights = _encoder_weights(spec, encoder, tag)
        try:
            model = _build(spec, encoder, num_classes, in_channels, enc_weights, aux, options)
        except ConfigError:
            raise
        except OSError as exc:  # hub download failures (offline, unknown file) are OSErrors
            if enc_weights is None:
                raise
            raise ConfigError(f"cannot fetch pretrained weights for encoder {encoder!r} (no network and not in the "
                              f"local cache?): {exc}; use pretrained=False or weights='file.pth'") from exc
        except (ValueError, KeyError, AttributeError, TypeError, RuntimeError, NotImplementedError) as exc:
            raise ConfigError(f"cannot build {spec.name!r} with encoder {encoder!r}: {exc}") from exc
        hub_state, hub_names = (_smp_hub_state(hub_id), None) if hub_id else (None, None)

    model.spec = {"arch": spec.name, "encoder": encoder, "num_classes": num_classes, "in_channels": in_channels,
                  "aux": bool(aux), **options}
    model.ontology = onto
    report: TransferReport | None = None
    if hub_state is not None:
        ck = Checkpoint(hub_state, source=str(hub_id), kind="hub")
        report = load_weights(model, ck, source_ontology=source_ontology or hub_names, target_ontology=onto,
                              label_map=label_map, verbose=verbose)
    elif checkpoint is not None:
        report = load_weights(model, checkpoint, source_ontology=source_ontology, target_ontology=onto,
                              label_map=label_map, trusted=trusted, verbose=verbose)
    model.load_report = report
    return model


def _smp_hub_state(repo_id: str) -> dict[str, Any]:
    """The state dict of an smp model on the Hugging Face hub (downloads on first use)."""
    import segmentation_models_pytorch as smp

    try:
        net = smp.from_pretrained(repo_id)
    except Exception as exc:  # network / hub errors of many types
        raise ConfigError(f"cannot load smp hub weights {repo_id!r}: {exc}") from exc
    return dict(net.state_dict())


def _build_mask2former(encoder: str, num_classes: int, in_channels: int, pretrained: bool, hub_id: str | None,
                       tag: str | None,
                       options: dict[str, Any]) -> tuple[ImageSegmenter, Any, list[str] | None, str | None]:
    """The model, the hub state dict and class names (None without hub weights), and the hub id used."""
    from terraseg.models.image import mask2former as m2f

    if tag is not None and not pretrained:
        raise ConfigError(f"mask2former weights={tag!r} is not understood; give a Hugging Face hub id "
                          f"(e.g. {m2f.ADE20K_WEIGHTS[encoder]!r}), a checkpoint file or pretrained=True")
    repo = hub_id or (m2f.ADE20K_WEIGHTS[encoder] if pretrained else None)
    if repo is None:
        return m2f.build_mask2former(encoder, num_classes, in_channels, **options), None, None, None
    try:
        return (*m2f.build_mask2former_from_hub(repo, num_classes, in_channels, **options), repo)
    except ConfigError:
        raise
    except Exception as exc:  # network / hub errors of many types
        raise ConfigError(f"cannot load Mask2Former weights {repo!r}: {exc}") from exc


def load_image_model(path: str | os.PathLike[str], *, trusted: bool = False, verbose: bool = False) -> ImageSegmenter:
    """Rebuild a model saved with :func:`terraseg.models.surgery.save_checkpoint` and load it exactly.

    Raises:
        DataError: the file is missing/unreadable or is not a terraseg checkpoint with a model spec.
    """
    ck = read_checkpoint(path, trusted=trusted)
    if ck.kind != "terraseg" or "arch" not in ck.spec:
        raise DataError(f"{path}: not a terraseg model checkpoint (no model spec); build the model with "
                        "build_image_model(arch, encoder, ..., weights=path) instead")
    if ck.spec.get("arch") == "fusion":
        raise DataError(f"{path}: a cross-modal (camera + LiDAR) checkpoint, not a camera model; it predicts paired "
                        "frames (terraseg.models.fusion.FusionPredictor, terraseg eval / predict on a paired dataset)")
    spec = dict(ck.spec)
    model = build_image_model(spec.pop("arch"), spec.pop("encoder", None), spec.pop("num_classes", None),
                              ontology=ck.ontology, **spec)
    model.load_report = load_weights(model, ck, strict=True, verbose=verbose)
    return model
