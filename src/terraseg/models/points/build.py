"""One entry point for the LiDAR segmentation networks: :func:`build_point_model`.

Architectures and presets (``--preset``):

=============  =========  ==================================================  ==========
arch           preset     widths                                              parameters
=============  =========  ==================================================  ==========
``randlanet``  default    d_out 16, 64, 128, 256 (paper, SemanticKITTI)       1.24 M
``randlanet``  small      d_out 8, 32, 64, 128                                0.31 M
``randlanet``  large      d_out 16 ... 512, ratios 4, 4, 4, 4, 2 (S3DIS)      4.98 M
``salsanext``  default    base 32, 3 context blocks (paper)                   6.71 M
``salsanext``  small      base 16, 1 context block                            1.67 M
``salsanext``  tiny       base 8, 1 context block                             0.42 M
``salsanext``  rt         small on a 4x width-folded image (real-time CPU)    1.67 M
``salsanext``  rt-tiny    tiny on a 4x width-folded image                     0.42 M
``voxelunet``  default    = minkunet18                                        21.7 M
``voxelunet``  minkunet18 residual, cs 32-32-64-128-256-256-128-96-96, 2 blocks 21.7 M
``voxelunet``  minkunet34 same widths, blocks 2-3-4-6 / 2-2-2-2                  37.9 M
``voxelunet``  small      half widths (16 ... 128 ... 48), 1 block per stage      2.90 M
``voxelunet``  scn        xMUDA's UNetSCN: 7 levels of 16-32-...-112, plain       2.69 M
=============  =========  ==================================================  ==========

(parameter counts for 20 classes and the default input channels; the paper reports 1.24 M
for RandLA-Net and 6.7 M for SalsaNext, SPVNAS 21.7 M for its MinkUNet). ``voxelunet`` is the
sparse voxel U-Net of :mod:`terraseg.models.points.voxelunet`; ``minkunet``, ``spunet`` and
``sparseunet`` are aliases.
"""

from __future__ import annotations

from typing import Any

from terraseg.errors import ConfigError
from terraseg.models.points.randlanet import RANDLA_PRESETS, RandLANet, RandLANetConfig
from terraseg.models.points.range_data import NORMALIZATIONS, normalization
from terraseg.models.points.salsanext import SALSANEXT_PRESETS, SalsaNext, SalsaNextConfig
from terraseg.models.points.voxelunet import VOXEL_PRESETS, VoxelUNet, VoxelUNetConfig

PointModel = RandLANet | SalsaNext | VoxelUNet

_ALIASES = {"randlanet": "randlanet", "randla-net": "randlanet", "randla": "randlanet",
            "salsanext": "salsanext", "salsa-next": "salsanext",
            "voxelunet": "voxelunet", "voxel-unet": "voxelunet", "minkunet": "voxelunet", "mink-unet": "voxelunet",
            "spunet": "voxelunet", "sparseunet": "voxelunet", "sparse-unet": "voxelunet"}
DEFAULT_IN_CHANNELS = {"randlanet": 3, "salsanext": 5, "voxelunet": 4}

PRESETS: dict[str, dict[str, dict[str, object]]] = {"randlanet": RANDLA_PRESETS, "salsanext": SALSANEXT_PRESETS,
                                                    "voxelunet": VOXEL_PRESETS}

RUNTIME_OPTIONS = {"voxelunet": ("backend", "conv_method")}
"""Build options that are not part of the saved config (a run-time choice)."""


def is_point_arch(arch: object) -> bool:
    """Whether ``arch`` (a model spec's ``arch``) names a point network of this factory (any
    alias): the one test of "is this a LiDAR model" for checkpoints."""
    return isinstance(arch, str) and arch.lower().replace("_", "-") in _ALIASES


def canonical_arch(arch: str) -> str:
    """The canonical name of an architecture (``randlanet``, ``salsanext`` or ``voxelunet``)."""
    key = arch.lower().replace("_", "-")
    if key not in _ALIASES:
        raise ConfigError(f"unknown point-model architecture {arch!r} (known: randlanet, salsanext, "
                          "voxelunet / minkunet / spunet)")
    return _ALIASES[key]


def build_point_model(arch: str, num_classes: int, in_channels: int | None = None, preset: str = "default",
                      **overrides: Any) -> PointModel:
    """A freshly initialised LiDAR segmentation network.

    Args:
        arch: ``"randlanet"`` (point-based), ``"salsanext"`` (range image) or ``"voxelunet"``
            (sparse voxel U-Net; aliases ``minkunet``, ``spunet``).
        num_classes: output classes.
        in_channels: input features; default 3 (x, y, z) for RandLA-Net, 5 (range, x, y, z,
            intensity) for SalsaNext, 4 point columns (x, y, z, intensity) for the voxel U-Net.
        preset: a width preset of the architecture (see the module table), or ``"custom"``
            (the config defaults, changed by ``overrides``).
        overrides: further config fields (:class:`RandLANetConfig`, :class:`SalsaNextConfig` or
            :class:`VoxelUNetConfig`, e.g. ``voxel_size=0.1``). For SalsaNext,
            ``normalization="rellis3d"`` (or ``"semantickitti"``, ``"none"``) selects published
            input statistics unless ``means`` / ``stds`` are given. For the voxel U-Net,
            ``backend`` (``auto``, ``torch``, ``spconv``) and ``conv_method`` (``mm``, ``gemm``)
            choose how its sparse convolutions run (not stored in checkpoints).

    Returns:
        A :class:`RandLANet`, :class:`SalsaNext` or :class:`VoxelUNet` in training mode, on the
        CPU; ``build_point_model(**model.spec)`` rebuilds it.
    """
    name = canonical_arch(arch)
    runtime = {k: overrides.pop(k) for k in RUNTIME_OPTIONS.get(name, ()) if k in overrides}
    presets = PRESETS[name]
    if preset not in presets and preset != "custom":
        raise ConfigError(f"unknown {name} preset {preset!r} (known: {', '.join(presets)}, or custom)")
    fields: dict[str, Any] = dict(presets.get(preset, {}))
    fields.update(overrides)
    fields["num_classes"] = num_classes
    fields["in_channels"] = DEFAULT_IN_CHANNELS[name] if in_channels is None else in_channels
    fields.setdefault("preset", preset)
    try:
        if name == "randlanet":
            return RandLANet(RandLANetConfig(**fields))
        if name == "voxelunet":
            return VoxelUNet(VoxelUNetConfig(**fields), **runtime)
        norm = str(fields.get("normalization", "semantickitti"))
        means, stds = normalization(norm) if norm != "custom" else NORMALIZATIONS["semantickitti"]
        fields.setdefault("means", means)
        fields.setdefault("stds", stds)
        same = (tuple(map(float, fields["means"])), tuple(map(float, fields["stds"]))) == (means, stds)
        fields["normalization"] = norm if same else "custom"
        return SalsaNext(SalsaNextConfig(**fields))
    except TypeError as exc:  # an unknown config field
        raise ConfigError(f"{name}: {exc}") from None
