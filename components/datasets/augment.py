"""ESAM's training augmentations for point frames (esam.md §1.7), as plain numpy functions.

Rigid part (flips, rotation about z, scale, translation) is returned as one 4x4 matrix so code that must
go back to the stored frame (projecting points into their image for fusion) can invert it; elastic
distortion is non-rigid and is applied to the coordinates the network sees only.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import convolve1d

from bifusion.components.config_schema import AugmentConfig

# ESAM's colour normalisation (ScanNet statistics on 0-255 colours).
COLOR_MEAN = np.array([0.4779, 0.4303, 0.3750]) * 255.0
COLOR_STD = np.array([0.2834, 0.2757, 0.2702]) * 255.0


def normalize_colors(rgb: np.ndarray) -> np.ndarray:
    """rgb (N, 3) in 0-255 -> (N, 3) float32 standardised with ESAM's mean/std."""
    return ((rgb - COLOR_MEAN) / COLOR_STD).astype(np.float32)


def random_rigid_transform(config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A random similarity (4, 4): flips of x and y, rotation about z, isotropic scale, translation."""
    linear = np.eye(3)
    for axis in (0, 1):
        if rng.random() < config.flip_prob:
            linear[axis, axis] = -1.0
    angle = rng.uniform(-config.rotation_range_rad, config.rotation_range_rad)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    scale = rng.uniform(*config.scale_range)
    matrix = np.eye(4)
    matrix[:3, :3] = scale * rotation @ linear
    matrix[:3, 3] = rng.normal(0.0, config.translation_std_m, 3)
    return matrix


def apply_transform(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """xyz (N, 3) -> matrix @ [xyz, 1] (N, 3)."""
    return xyz @ matrix[:3, :3].T + matrix[:3, 3]


def elastic_distortion(
    xyz: np.ndarray, granularity_voxels: float, magnitude_voxels: float, voxel_size: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement field (Mask3D/ESAM's elastic augmentation), in voxel units.

    A Gaussian noise grid with one cell per `granularity` voxels is blurred twice with a 3-tap box filter
    along each axis, trilinearly interpolated at the points and added with weight `magnitude`.
    """
    coords = xyz / voxel_size
    origin = coords.min(axis=0)
    noise_shape = ((coords - origin).max(axis=0) // granularity_voxels).astype(int) + 3
    noise = rng.standard_normal((*noise_shape, 3))
    box = np.ones(3) / 3.0
    for _ in range(2):
        for axis in range(3):
            noise = convolve1d(noise, box, axis=axis, mode="constant", cval=0.0)
    axes = [
        np.linspace(origin[d] - granularity_voxels, origin[d] + granularity_voxels * (noise_shape[d] - 2), noise_shape[d])
        for d in range(3)
    ]
    interpolate = RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0.0)
    return (coords + interpolate(coords) * magnitude_voxels) * voxel_size


def maybe_elastic(xyz: np.ndarray, config: AugmentConfig, voxel_size: float, rng: np.random.Generator) -> np.ndarray:
    """Apply the configured elastic passes with probability `elastic_prob` (never when it is 0)."""
    if config.elastic_prob <= 0.0 or rng.random() >= config.elastic_prob:
        return xyz
    for granularity, magnitude in config.elastic_passes:
        xyz = elastic_distortion(xyz, granularity, magnitude, voxel_size, rng)
    return xyz
