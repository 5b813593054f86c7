"""Pictures of scenes and frames to check by eye: instance segmentations side by side, and projected points
drawn on the colour image (wrong intrinsics or poses show at once as points off their objects).

Points are splatted with numpy into a z-buffer: each point covers a small disc of pixels and, where discs
overlap, the point nearest to the viewer wins (a painter's order by depth), so renders are deterministic.
PNG files are written through matplotlib's Agg canvas at exactly `size_px` (or the colour image's size).
Camera conventions are those of `bifusion.model.geometry` (OpenCV: x right, y down, z forward; pixel centres at
integer coordinates; poses camera-to-world).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, hsv_to_rgb
from matplotlib.figure import Figure

from bifusion.model.geometry import project_points, scale_intrinsics

DPI = 100
UNASSIGNED_COLOR = (0.78, 0.78, 0.78)  # points without an instance
BACKGROUND_COLOR = (1.0, 1.0, 1.0)
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


@dataclass(frozen=True)
class OrthographicView:
    """Parallel projection looking along `direction` (world frame), fitted to the points with a margin.

    The default looks straight down (-z): a top view with world +x to the right and +y up in the picture.
    """

    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    margin: float = 0.03  # share of the picture left empty on each side


@dataclass(frozen=True)
class PinholeView:
    """A camera: intrinsics (3, 3) for an image of `image_size` (W, H) and cam_to_world (4, 4).

    The picture keeps the image's aspect ratio inside the panel (letterboxed when the panel's differs).
    """

    intrinsics: np.ndarray
    cam_to_world: np.ndarray
    image_size: tuple[int, int]


def instance_colors(instance_ids: np.ndarray) -> np.ndarray:
    """Colour (N, 3) in [0, 1] of each id: the same id always gets the same colour; ids < 1 are grey."""
    ids = np.asarray(instance_ids, dtype=np.int64)
    hue = (ids * _GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation = 0.55 + 0.4 * ((ids * 0.37) % 1.0)
    value = 0.75 + 0.2 * ((ids * 0.71) % 1.0)
    colors = hsv_to_rgb(np.stack([hue, saturation, value], axis=-1))
    return np.where((ids < 1)[..., None], np.asarray(UNASSIGNED_COLOR), colors)


def project_to_image(
    points_world: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uv (N, 2) pixel coordinates, depth z (N,) and valid (N,) = in front of the camera and inside the image.

    points_world (N, 3), intrinsics (3, 3) for an image of image_size (W, H), cam_to_world (4, 4). Inside means
    -0.5 <= u < W - 0.5 and likewise v, as `geometry.inside_image`; no occlusion test.
    """
    uv, z = project_points(np.asarray(points_world, dtype=np.float64), np.asarray(intrinsics), np.asarray(cam_to_world))
    width, height = image_size
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < height - 0.5)
    return uv, z, (z > 0) & inside


def project_view(
    points_world: np.ndarray, view: OrthographicView | PinholeView, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uv (N, 2) in a picture of `size` (W, H), depth (N,) away from the viewer and visible (N,) bool."""
    points = np.asarray(points_world, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_world must have shape (N, 3), got {points.shape}")
    width, height = size
    if isinstance(view, PinholeView):
        image_width, image_height = view.image_size
        scale = min(width / image_width, height / image_height)
        intrinsics = scale_intrinsics(view.intrinsics, view.image_size, (image_width * scale, image_height * scale))
        intrinsics[0, 2] += (width - image_width * scale) / 2
        intrinsics[1, 2] += (height - image_height * scale) / 2
        return project_to_image(points, intrinsics, view.cam_to_world, size)
    forward = np.asarray(view.direction, dtype=np.float64)
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError(f"OrthographicView.direction must not be zero, got {view.direction}")
    forward = forward / np.linalg.norm(forward)
    up_hint = np.array([0.0, 1.0, 0.0]) if abs(forward[2]) > 0.99 else np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up_hint)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    x, y, depth = points @ right, points @ up, points @ forward
    if not len(points):
        return np.zeros((0, 2)), depth, np.zeros(0, dtype=bool)
    span_x, span_y = max(np.ptp(x), 1e-9), max(np.ptp(y), 1e-9)
    usable = 1.0 - 2.0 * view.margin
    # Pixel centres run from 0 to W - 1: the extreme points land on the border pixels' centres at margin 0.
    scale = min((width - 1) * usable / span_x, (height - 1) * usable / span_y)
    u = (width - 1) / 2 + (x - (x.max() + x.min()) / 2) * scale
    v = (height - 1) / 2 - (y - (y.max() + y.min()) / 2) * scale
    return np.stack([u, v], axis=1), depth, np.ones(len(points), dtype=bool)


def splat_points(
    uv: np.ndarray, depth: np.ndarray, colors: np.ndarray, size: tuple[int, int], radius_px: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Draw points as discs of `radius_px` into a (H, W) picture; nearest point (smallest depth) wins a pixel.

    uv (N, 2) pixel coordinates, depth (N,), colors (N, 3) in [0, 1]. Returns the colour layer (H, W, 3) float
    (background where nothing landed) and covered (H, W) bool. Ties in depth go to the lower point index.
    """
    width, height = size
    uv, depth, colors = (np.asarray(a, dtype=np.float64) for a in (uv, depth, colors))
    span = range(-radius_px, radius_px + 1)
    offsets = [(dx, dy) for dy in span for dx in span if dx * dx + dy * dy <= radius_px * radius_px]
    centre = np.rint(uv).astype(np.int64)
    pixel_parts, point_parts = [], []
    for dx, dy in offsets:
        column, row = centre[:, 0] + dx, centre[:, 1] + dy
        inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
        pixel_parts.append(row[inside] * width + column[inside])
        point_parts.append(np.flatnonzero(inside))
    pixels, points = np.concatenate(pixel_parts), np.concatenate(point_parts)
    order = np.lexsort((points, depth[points], pixels))
    pixels, points = pixels[order], points[order]
    first = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]]) if len(pixels) else np.zeros(0, dtype=np.int64)
    layer = np.tile(np.asarray(BACKGROUND_COLOR), (height * width, 1))
    covered = np.zeros(height * width, dtype=bool)
    layer[pixels[first]] = colors[points[first]]
    covered[pixels[first]] = True
    return layer.reshape(height, width, 3), covered.reshape(height, width)


def prediction_instance_ids(pred_masks: np.ndarray, pred_scores: np.ndarray | None, gt_instance_ids: np.ndarray) -> np.ndarray:
    """Per-point id (N,) for drawing K predicted masks (K, N): where masks overlap the higher score wins.

    A prediction takes the id of the GT instance it overlaps best when their IoU is at least 0.5, so a found
    object has the same colour in both panels; other predictions get ids above every GT id; 0 = no prediction.
    """
    masks = np.asarray(pred_masks) != 0
    gt_ids = np.asarray(gt_instance_ids, dtype=np.int64)
    if masks.ndim != 2 or masks.shape[1] != len(gt_ids):
        raise ValueError(f"pred_masks must have shape (K, {len(gt_ids)}), got {masks.shape}")
    num_preds = len(masks)
    scores = np.zeros(num_preds) if pred_scores is None else np.asarray(pred_scores, dtype=np.float64)
    if scores.shape != (num_preds,):
        raise ValueError(f"pred_scores must have shape ({num_preds},), got {scores.shape}")
    gt_values, gt_index = np.unique(gt_ids, return_inverse=True)
    gt_size = np.bincount(gt_index, minlength=len(gt_values))
    next_free = max(int(gt_ids.max(initial=0)), 0) + 1
    ids = np.zeros(len(gt_ids), dtype=np.int64)
    for k in np.argsort(scores, kind="stable"):
        intersection = np.bincount(gt_index[masks[k]], minlength=len(gt_values))
        iou = np.where(gt_values > 0, intersection / (gt_size + masks[k].sum() - intersection), 0.0)
        best = int(np.argmax(iou)) if len(iou) else 0
        if len(iou) and iou[best] >= 0.5:
            ids[masks[k]] = gt_values[best]
        else:
            ids[masks[k]] = next_free + k
    return ids


def _write_picture(picture: np.ndarray, path: str | Path, labels: list[tuple[float, str]]) -> Path:
    """Save a (H, W, 3) float picture 1:1 as PNG with text labels at (x fraction of the width, text) on top."""
    height, width = picture.shape[:2]
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(np.clip(picture, 0.0, 1.0), interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for x, text in labels:
        ax.text(x * width + 6, 6, text, fontsize=9, va="top", ha="left", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def render_instances_side_by_side(
    points_world: np.ndarray,
    gt_instance_ids: np.ndarray,
    pred_masks: np.ndarray,
    path: str | Path,
    pred_scores: np.ndarray | None = None,
    view: OrthographicView | PinholeView = OrthographicView(),
    size_px: tuple[int, int] = (1200, 600),
    point_radius_px: int = 2,
) -> Path:
    """GT instances (left) and predicted instances (right) of one scene or frame, seen from `view`.

    points_world (N, 3); gt_instance_ids (N,) with 0 = no instance (set stuff such as walls to 0 to grey it);
    pred_masks (K, N) bool; pred_scores (K,) decide which mask shows where masks overlap. Matched predictions
    share their GT instance's colour (see `prediction_instance_ids`).
    """
    gt_ids = np.asarray(gt_instance_ids, dtype=np.int64)
    if gt_ids.shape != (len(points_world),):
        raise ValueError(f"gt_instance_ids must have shape ({len(points_world)},), got {gt_ids.shape}")
    pred_ids = prediction_instance_ids(pred_masks, pred_scores, gt_ids)
    width, height = size_px
    panel_sizes = ((width // 2, height), (width - width // 2, height))
    panels = []
    for ids, panel_size in zip((gt_ids, pred_ids), panel_sizes):
        uv, depth, visible = project_view(points_world, view, panel_size)
        layer, _ = splat_points(uv[visible], depth[visible], instance_colors(ids[visible]), panel_size, point_radius_px)
        panels.append(layer)
    picture = np.concatenate(panels, axis=1)
    picture[:, width // 2 - 1 : width // 2 + 1] = 0.3  # divider
    num_gt = len(np.unique(gt_ids[gt_ids > 0]))
    labels = [(0.0, f"ground truth: {num_gt} instances"), (0.5, f"prediction: {np.shape(pred_masks)[0]} masks")]
    return _write_picture(picture, path, labels)


def render_projection_overlay(
    image: np.ndarray,
    uv: np.ndarray,
    valid: np.ndarray,
    path: str | Path,
    depth: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    point_radius_px: int = 1,
    opacity: float = 0.7,
) -> Path:
    """The colour image (H, W, 3) with the valid projected points drawn on it, at the image's own size.

    uv (N, 2) pixel coordinates in this image (e.g. `project_to_image`, or the fusion encoder's image
    correspondence rescaled to this image); valid (N,) bool. Points are coloured by `colors` (N, 3) in [0, 1]
    if given, else by depth (N,) (near yellow, far purple; 2nd-98th percentile), else magenta; nearer points
    are drawn over farther ones when depth is given.
    """
    picture = np.asarray(image)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {picture.shape}")
    picture = picture.astype(np.float64) / (255.0 if np.issubdtype(picture.dtype, np.integer) else 1.0)
    uv, valid = np.asarray(uv, dtype=np.float64), np.asarray(valid, dtype=bool)
    if uv.shape != (len(valid), 2):
        raise ValueError(f"uv must have shape ({len(valid)}, 2), got {uv.shape}")
    height, width = picture.shape[:2]
    order_depth = np.zeros(len(valid)) if depth is None else np.asarray(depth, dtype=np.float64)
    if colors is not None:
        point_colors = np.asarray(colors, dtype=np.float64)
        if point_colors.shape != (len(valid), 3):
            raise ValueError(f"colors must have shape ({len(valid)}, 3), got {point_colors.shape}")
    elif depth is not None and valid.any():
        low, high = np.percentile(order_depth[valid], [2, 98])
        point_colors = ScalarMappable(Normalize(low, max(high, low + 1e-6)), "viridis_r").to_rgba(order_depth)[:, :3]
    else:
        point_colors = np.tile([1.0, 0.0, 1.0], (len(valid), 1))
    layer, covered = splat_points(uv[valid], order_depth[valid], point_colors[valid], (width, height), point_radius_px)
    blended = np.where(covered[..., None], (1 - opacity) * picture + opacity * layer, picture)
    return _write_picture(blended, path, [(0.0, f"{int(valid.sum())} of {len(valid)} points project into the image")])
