"""What the air does to the simulated LiDAR in fog: attenuation, lost returns and backscatter.

Applied by :func:`terraseg.sim.render` when the weather has ``lidar_extinction`` or
``lidar_clutter`` (the ``fog`` weather); in clear air the scan is left exactly as it was, and so are
the random draws of every other weather (this model draws from a generator of its own).

For a ray whose clear-air return lies ``r`` metres away with intensity ``I`` (reflectivity x
incidence, as the clear-air simulator reports it):

- **Attenuation.** Two-way transmission ``T2 = exp(-2 alpha r)`` (Beer-Lambert, extinction
  coefficient ``alpha = Weather.lidar_extinction`` in 1/m). The reported intensity is ``I * T2``:
  the sensor reports the received signal, which the fog dims.
- **Lost returns.** The return's link budget, in nepers (natural log of signal over detection
  threshold), is ``m = ln(I / I_MIN) + 2 ln(R_max / r)``: a return of intensity ``I_MIN`` at the
  sensor's maximum range is just detectable. Fog costs ``2 alpha r`` nepers, and the received
  energy fluctuates (speckle, pulse energy: log-normal, ``SIGMA`` nepers), so the return survives
  with probability ``p = Phi((max(m, 0) - 2 alpha r) / SIGMA)`` (:func:`fog_survival`; ``Phi`` the
  standard normal CDF; returns the clear-air simulator keeps despite ``m < 0`` count as ``m = 0``).
  Near, bright returns survive; far and dark ones are lost.
- **Backscatter.** The fog itself returns light from close by (Hahner et al., "Fog simulation on
  real LiDAR point clouds", ICCV 2021). A ray left without a hard return (nothing within range,
  dropped, or lost to the fog) reports, with probability ``Weather.lidar_clutter``, a return at
  ``min_range + Gamma(2, Weather.lidar_clutter_scale)`` metres (mode ``min_range + scale``) when
  that is in front of the ray's hard target, if any, and within the sensor's range; its intensity
  is uniform in ``[0, CLUTTER_MAX_INTENSITY)`` and its label void (id 0, which evaluation ignores),
  instance 0.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from terraseg.sim.sensors import LidarConfig

I_MIN = 0.02
"""Intensity (0..1) of a return that is just detectable at the sensor's maximum range."""

SIGMA = 0.5
"""Standard deviation of the received energy's log-normal fluctuation, nepers."""

CLUTTER_MAX_INTENSITY = 0.05
"""Backscatter returns have intensities uniform in [0, this)."""

VOID = 0
"""Label of backscatter returns (the sim ontology's void class)."""


def fog_survival(r: np.ndarray, intensity: np.ndarray, extinction: float, max_range: float) -> np.ndarray:
    """Probability that a clear-air return survives the fog (see the module docstring).

    Args:
        r: ranges of the returns, metres.
        intensity: their clear-air intensities (0..1); values below 1e-3 count as 1e-3.
        extinction: the air's extinction coefficient ``alpha``, 1/m (0: clear air, probability 1).
        max_range: the sensor's maximum range, metres.
    """
    r = np.maximum(np.asarray(r, dtype=np.float64), 1e-3)
    i = np.maximum(np.asarray(intensity, dtype=np.float64), 1e-3)
    if extinction <= 0:
        return np.ones(np.broadcast(r, i).shape)
    margin = np.maximum(np.log(i / I_MIN) + 2.0 * np.log(max_range / r), 0.0)
    return ndtr((margin - 2.0 * extinction * r) / SIGMA)


def apply_lidar_weather(rays: np.ndarray, xyz: np.ndarray, r: np.ndarray, intensity: np.ndarray, labels: np.ndarray,
                        instances: np.ndarray, hit_t: np.ndarray, dirs: np.ndarray, cfg: LidarConfig, weather: object,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scan as the fog lets the sensor see it.

    Args:
        rays: (N,) ray indices (row-major beam x azimuth) of the clear-air returns, increasing.
        xyz, r, intensity, labels, instances: those returns (LiDAR frame, metres; range, metres;
            intensity 0..1; class and instance ids).
        hit_t: (beams * azimuth_steps,) distance to each ray's hard target, metres (inf: none).
        dirs: (beams * azimuth_steps, 3) unit ray directions in the LiDAR frame.
        cfg: the sensor; ``weather``: a :class:`~terraseg.sim.appearance.Weather`.
        rng: draws of the fog (three per ray, whatever the scene, so a scan is reproducible).

    Returns:
        (rays, xyz, intensity, labels, instances) of the surviving and backscatter returns, in ray order.
    """
    alpha = float(weather.lidar_extinction)  # type: ignore[attr-defined]
    n_rays = len(hit_t)
    u_survive = rng.random(n_rays)
    u_clutter = rng.random(n_rays)
    r_clutter = cfg.min_range + rng.gamma(2.0, float(weather.lidar_clutter_scale), n_rays)  # type: ignore[attr-defined]
    i_clutter = rng.random(n_rays) * CLUTTER_MAX_INTENSITY
    survive = u_survive[rays] < fog_survival(r, intensity, alpha, cfg.max_range)
    hard = np.zeros(n_rays, bool)
    hard[rays[survive]] = True
    target = np.where(np.isfinite(hit_t), hit_t, np.inf)
    clutter = (~hard & (u_clutter < float(weather.lidar_clutter))  # type: ignore[attr-defined]
               & (r_clutter < target) & (r_clutter < cfg.max_range))
    c_rays = np.nonzero(clutter)[0]
    out_rays = np.concatenate([rays[survive], c_rays])
    order = np.argsort(out_rays, kind="stable")
    t2 = np.exp(-2.0 * alpha * r[survive])
    xyz_out = np.concatenate([xyz[survive], dirs[c_rays] * r_clutter[c_rays, None]])[order]
    inten_out = np.concatenate([intensity[survive] * t2, i_clutter[c_rays]])[order]
    labels_out = np.concatenate([labels[survive], np.full(len(c_rays), VOID, labels.dtype)])[order]
    inst_out = np.concatenate([instances[survive], np.zeros(len(c_rays), instances.dtype)])[order]
    return out_rays[order], xyz_out, inten_out, labels_out, inst_out


__all__ = ["CLUTTER_MAX_INTENSITY", "I_MIN", "SIGMA", "VOID", "apply_lidar_weather", "fog_survival"]
