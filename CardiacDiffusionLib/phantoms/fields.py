"""Smooth random fields that can be evaluated at any physical point (LPS mm).

A field is a sum of random plane waves (random directions, wavelengths around ``scale_mm`` and
phases), so it is analytic: the same point gives the same value whatever grid or plane it is
sampled on, which keeps volumes, SAX slices and LAX planes of one phantom consistent.
"""

from __future__ import annotations

import numpy as np

#: points evaluated per chunk (bounds the (points x waves) temporary to ~50 MB)
_CHUNK = 200_000


class SmoothField:
    """Zero-mean, unit-variance random field with features of about ``scale_mm``."""

    def __init__(self, rng: np.random.Generator, scale_mm: float, waves: int = 24):
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = scale_mm * np.exp(rng.normal(0.0, 0.3, size=waves))
        # float32: numpy's float32 cosine is ~20x faster than float64 and exact enough for an image
        self.k = (directions * (2.0 * np.pi / wavelengths)[:, None]).T.astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, size=waves).astype(np.float32)
        self.amplitude = np.full(waves, np.sqrt(2.0 / waves), np.float32)  # variance of the sum = 1

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points)
        flat = points.reshape(-1, 3)
        out = np.empty(len(flat), np.float32)
        for start in range(0, len(flat), _CHUNK):
            block = flat[start : start + _CHUNK].astype(np.float32)
            out[start : start + _CHUNK] = np.cos(block @ self.k + self.phase) @ self.amplitude
        return out.reshape(points.shape[:-1])


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels: ``|I + n1 + i n2|``."""
    n1 = rng.normal(0.0, sigma, size=image.shape)
    n2 = rng.normal(0.0, sigma, size=image.shape)
    return np.sqrt((image + n1) ** 2 + n2**2).astype(np.float32)
