"""Where a pixel of an image goes when the image is resized, cropped and flipped.

A :class:`PixelMap` is the axis-aligned affine map from pixel coordinates of a *source* image
(the camera frame a calibration belongs to) to pixel coordinates of the *network input* made from
it by resizing, cropping and horizontal flipping::

    u_out = sx * u_src + tx        (u: column, to the right)
    v_out = sy * v_src + ty        (v: row, down)

Both sides use the pixel-centre convention of :mod:`terraseg.geometry.projection`: integer
coordinates are pixel centres, pixel ``(col, row)`` covers ``u in [col - 0.5, col + 0.5)``. A
resize by ``s`` is therefore ``u_out = (u_src + 0.5) * s - 0.5`` (the grid OpenCV's resize samples
on), a crop starting at output column ``c0`` subtracts ``c0``, and a flip of a ``w``-pixel wide
image is ``u -> w - 1 - u`` (``sx`` becomes negative). ``valid_size`` is the part of the output
that holds image content (a crop of an image smaller than the crop is padded at the bottom and
right); points whose rounded output pixel falls outside it are not in the network's view.

>>> m = PixelMap.resize((640, 480), (320, 240))
>>> m.apply([[0.0, 0.0], [639.0, 479.0], [319.5, 239.5]]).tolist()
[[-0.25, -0.25], [319.25, 239.25], [159.5, 119.5]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terraseg.errors import DataError


@dataclass(frozen=True)
class PixelMap:
    """Affine pixel map source image -> network input (see the module docstring).

    Attributes:
        sx, sy: scale of u and v (negative ``sx``: horizontally flipped).
        tx, ty: offsets in output pixels.
        out_size: ``(width, height)`` of the network input in pixels.
        valid_size: ``(width, height)`` of the top-left part of the output holding image content
            (equal to ``out_size`` unless the output is padded).
    """

    sx: float = 1.0
    sy: float = 1.0
    tx: float = 0.0
    ty: float = 0.0
    out_size: tuple[int, int] = (0, 0)
    valid_size: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, size: tuple[int, int]) -> PixelMap:
        """No change for an image of ``size`` = (width, height)."""
        w, h = int(size[0]), int(size[1])
        return cls(1.0, 1.0, 0.0, 0.0, (w, h), (w, h))

    @classmethod
    def resize(cls, src_size: tuple[int, int], dst_size: tuple[int, int]) -> PixelMap:
        """Resize ``src_size`` -> ``dst_size`` (both (width, height)), centre-aligned."""
        sx = dst_size[0] / src_size[0]
        sy = dst_size[1] / src_size[1]
        w, h = int(dst_size[0]), int(dst_size[1])
        return cls(sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5, (w, h), (w, h))

    def then(self, other: PixelMap) -> PixelMap:
        """This map followed by ``other`` (``other`` maps this map's output onward)."""
        return PixelMap(other.sx * self.sx, other.sy * self.sy, other.sx * self.tx + other.tx,
                        other.sy * self.ty + other.ty, other.out_size, other.valid_size)

    def flipped(self) -> PixelMap:
        """This map followed by a horizontal flip of the valid part (``u -> w_valid - 1 - u``)."""
        w = self.valid_size[0]
        return PixelMap(-self.sx, self.sy, w - 1 - self.tx, self.ty, self.out_size, self.valid_size)

    # ------------------------------------------------------------------ use
    def apply(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) source pixel coordinates ``(u, v)`` -> (N, 2) float64 output coordinates."""
        a = np.asarray(uv, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2:
            raise DataError(f"pixel coordinates must be an (N, 2) array of (u, v), got shape {a.shape}")
        out = np.empty_like(a)
        out[:, 0] = self.sx * a[:, 0] + self.tx
        out[:, 1] = self.sy * a[:, 1] + self.ty
        return out

    def inverse_apply(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) output coordinates -> (N, 2) source coordinates."""
        a = np.asarray(uv, dtype=np.float64)
        out = np.empty_like(a)
        out[:, 0] = (a[:, 0] - self.tx) / self.sx
        out[:, 1] = (a[:, 1] - self.ty) / self.sy
        return out

    def inside(self, uv_out: np.ndarray) -> np.ndarray:
        """(N,) bool: the rounded output pixel ``floor(uv + 0.5)`` lies in the valid part."""
        a = np.asarray(uv_out, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            col = np.floor(a[:, 0] + 0.5)
            row = np.floor(a[:, 1] + 0.5)
            return (col >= 0) & (col < self.valid_size[0]) & (row >= 0) & (row < self.valid_size[1])

    def to_dict(self) -> dict[str, object]:
        return {"sx": self.sx, "sy": self.sy, "tx": self.tx, "ty": self.ty, "out_size": list(self.out_size),
                "valid_size": list(self.valid_size)}
