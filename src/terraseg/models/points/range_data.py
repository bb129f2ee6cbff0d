"""Network input of range-image models: normalised (C, H, W) channel stacks.

The raw channels are, in this order, ``range`` (metres), ``x``, ``y``, ``z`` (metres, sensor
frame) and ``intensity`` (the scan's fourth column, in the sensor's units) of the point behind
each pixel of a :class:`~terraseg.geometry.range_image.RangeImage`. As in RangeNet++ and
SalsaNext, each channel is standardised with fixed per-channel statistics and then multiplied
by the validity mask, so empty pixels are exactly 0::

    input[c] = (raw[c] - mean[c]) / std[c] * mask

Statistics (:data:`NORMALIZATIONS`, values copied from the published configurations):

- ``semantickitti``: RangeNet++ / SalsaNext ``arch_cfg`` for SemanticKITTI (Velodyne HDL-64E,
  remission in [0, 1]): means 12.12, 10.88, 0.23, -1.04, 0.21; stds 12.32, 11.47, 6.91, 0.86,
  0.16.
- ``rellis3d``: the RELLIS-3D SalsaNext benchmark config ``salsanext_ouster.yml`` (Ouster OS1-64;
  its intensity is about 0.003 on average): means 4.846, -0.188, 0.194, -0.247, 0.00261; stds
  6.054, 5.610, 5.273, 0.849, 0.00285. These were computed over whole images including empty
  pixels (the range mean of the valid points of scan 000104 is 9.5 m, 5.6 m with the zeros).
- ``none``: means 0, stds 1 (raw values).

Channel counts: 4 = range, x, y, z; 5 = + intensity (the published models); 6 = + the mask as
a 0 / 1 channel (after the five standardised ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.range_image import RangeImage

RAW_CHANNELS = ("range", "x", "y", "z", "intensity")

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "semantickitti": ((12.12, 10.88, 0.23, -1.04, 0.21), (12.32, 11.47, 6.91, 0.86, 0.16)),
    "rellis3d": ((4.84649722, -0.187910314, 0.193718327, -0.246564824, 0.00260723157),
                 (6.05381850, 5.61048984, 5.27298844, 0.849105890, 0.00284712457)),
    "none": ((0.0, 0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0, 1.0)),
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(means, stds) of a named normalisation (see :data:`NORMALIZATIONS`)."""
    key = name.lower()
    if key not in NORMALIZATIONS:
        raise ConfigError(f"unknown range-image normalisation {name!r} (known: {', '.join(sorted(NORMALIZATIONS))})")
    return NORMALIZATIONS[key]


def range_input(image: RangeImage, means: Sequence[float], stds: Sequence[float], in_channels: int = 5,
                source: str = "range image") -> np.ndarray:
    """The normalised network input of a range image.

    Args:
        image: the range image (from ``project_scan`` or ``from_organized``).
        means, stds: 5 per-channel statistics (range, x, y, z, intensity).
        in_channels: 4 (range, x, y, z), 5 (+ intensity) or 6 (+ mask).
        source: name used in error messages.

    Returns:
        (in_channels, H, W) float32, 0 at empty pixels in the five data channels.

    Raises:
        DataError: when the model needs intensity and the scan has none.
    """
    if in_channels not in (4, 5, 6):
        raise ConfigError(f"range_input: in_channels must be 4, 5 or 6, got {in_channels}")
    m = np.asarray(means, dtype=np.float32)
    s = np.asarray(stds, dtype=np.float32)
    if m.shape != (5,) or s.shape != (5,) or not (s > 0).all():
        raise ConfigError(f"range_input: need 5 means and 5 positive stds, got {m.shape} and {s.shape}")
    n_data = 4 if in_channels == 4 else 5
    if n_data == 5 and image.intensity is None:
        raise DataError(f"{source}: the model expects intensity (channel 4) but the points have only x, y, z")
    h, w = image.shape
    out = np.empty((in_channels, h, w), dtype=np.float32)
    out[0] = image.range
    out[1:4] = np.moveaxis(image.xyz, -1, 0)
    if n_data == 5:
        assert image.intensity is not None
        out[4] = image.intensity
    mask = image.mask.astype(np.float32)
    out[:n_data] -= m[:n_data, None, None]
    out[:n_data] /= s[:n_data, None, None]
    out[:n_data] *= mask
    if in_channels == 6:
        out[5] = mask
    return out
