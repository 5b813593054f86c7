"""Online predictions on accumulated frame points -> predictions on the reconstructed mesh.

ESAM evaluates its online model on the standard ScanNet GT, the mesh: every mesh vertex takes the
prediction of its nearest accumulated frame point, then (optionally) masks are smoothed over ScanNet's
offline mesh segments (a vertex belongs to an instance when more than half of its segment does). The
smoothing uses offline segmentation in an "online" evaluation, so it is a switch and is reported.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def nearest_point_index(mesh_xyz: np.ndarray, points_xyz: np.ndarray) -> np.ndarray:
    """Index `(V,)` of the nearest accumulated point for every mesh vertex; both (., 3) in one frame."""
    if len(points_xyz) == 0:
        raise ValueError("no accumulated points: the online model saw no valid frame of this scene")
    _, index = cKDTree(points_xyz).query(mesh_xyz, k=1, workers=1)
    return index


def transfer_masks(point_masks: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Instance masks `(K, P)` over accumulated points -> `(K, V)` over mesh vertices (1-NN)."""
    return point_masks[:, nearest]


def smooth_over_segments(vertex_masks: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Masks `(K, V)` -> masks where each mesh segment is all in (mean > 0.5) or all out (ESAM's smoothing)."""
    _, segment_index = np.unique(segments, return_inverse=True)
    counts = np.bincount(segment_index)
    smoothed = np.empty_like(vertex_masks)
    for row, mask in enumerate(vertex_masks):
        share = np.bincount(segment_index, weights=mask.astype(np.float64), minlength=len(counts)) / counts
        smoothed[row] = share[segment_index] > 0.5
    return smoothed


def transfer_semantics(point_classes: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Per-point semantic classes `(P,)` -> per-vertex `(V,)` (1-NN)."""
    return point_classes[nearest]
