"""Per-frame superpoints: 2D segments of the RGB-D frame lifted to points through their source pixels.

ESAM paints SAM/FastSAM masks on the image and lifts them to points; points no mask covers are
clustered separately. We keep that structure and make the 2D segmenter pluggable:

- `felzenszwalb` (default, CPU, no model weights): Felzenszwalb-Huttenlocher graph segmentation of an
  image whose channels are colour (0-1), surface normal n (x `normal_weight`) and the offset n.p of the
  pixel's tangent plane in metres (x `plane_offset_weight`); edges between pixels cost the Euclidean
  distance of these channels, so segments stop at colour edges, creases and depth jumps between parallel
  surfaces. Raw depth is not a channel: it changes steadily along slanted floors and walls, and the
  method then cuts them into bands; n and n.p are constant on a plane. `scale`, `sigma`, `min_size` are
  the method's own knobs, in pixels of the image subsampled by `downsample`.
- `masks`: precomputed 2D instance masks per frame (e.g. SAM's), `<frame dir>/<masks_dir>/<N>.npy`
  (int, -1 = uncovered) or `<N>.png` (0 = uncovered); uncovered pixels fall back to Felzenszwalb
  segments, as ESAM falls back to KMeans.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from bifusion.components.config_schema import SuperpointConfig
from bifusion.components.scannet_raw import RawDataError, SceneLayout
from bifusion.components.storage import Storage, join_uri
from bifusion.model.geometry import backproject_image, depth_normals


def felzenszwalb_segments(color: np.ndarray, depth_m: np.ndarray, intrinsics: np.ndarray, config: SuperpointConfig) -> np.ndarray:
    """Segment ids `(H, W)` int64 for colour (H, W, 3) uint8 and depth_m (H, W) of one frame.

    Segmentation runs on every `downsample`-th pixel (the method costs ~0.8 s on a 640x480 frame, ~0.2 s
    on 320x240) and the ids are spread back to full resolution by nearest neighbour.
    """
    from skimage.segmentation import felzenszwalb

    step = config.downsample
    small_color, small_depth = color[::step, ::step], depth_m[::step, ::step]
    small_intrinsics = np.array(intrinsics[:3, :3], dtype=np.float64)
    small_intrinsics[:2] /= step  # pixel (i, j) of the subsampled grid is pixel (step*i, step*j) of the frame
    normals = depth_normals(small_depth, small_intrinsics)
    plane_offset = (normals * backproject_image(small_depth, small_intrinsics)).sum(axis=-1, keepdims=True)
    image = np.concatenate(
        [small_color.astype(np.float64) / 255.0, normals * config.normal_weight, plane_offset * config.plane_offset_weight],
        axis=-1,
    )
    with warnings.catch_warnings():
        # skimage warns that a 7-channel image may not be intended; here it is.
        warnings.filterwarnings("ignore", message="Got image with third dimension", category=RuntimeWarning)
        segments = felzenszwalb(image, scale=config.scale, sigma=config.sigma, min_size=config.min_size, channel_axis=-1)
    rows = np.minimum(np.arange(depth_m.shape[0]) // step, segments.shape[0] - 1)
    cols = np.minimum(np.arange(depth_m.shape[1]) // step, segments.shape[1] - 1)
    return segments[rows][:, cols].astype(np.int64)


def load_mask_image(storage: Storage, layout: SceneLayout, masks_dir: str, frame: int, shape: tuple[int, int]) -> np.ndarray:
    """Precomputed mask ids `(H, W)` int64 for a frame, -1 where no mask covers the pixel."""
    from PIL import Image

    base = join_uri(layout.frame_dir, masks_dir)
    npy_uri, png_uri = join_uri(base, f"{frame}.npy"), join_uri(base, f"{frame}.png")
    if storage.exists(npy_uri):
        try:
            masks = np.load(io.BytesIO(storage.read_bytes(npy_uri)), allow_pickle=False).astype(np.int64)
        except ValueError as exc:
            raise RawDataError(f"{npy_uri}: not a readable .npy mask array ({exc})") from None
        uri = npy_uri
    elif storage.exists(png_uri):
        try:
            with Image.open(io.BytesIO(storage.read_bytes(png_uri))) as image:
                masks = np.asarray(image).astype(np.int64) - 1
        except OSError as exc:
            raise RawDataError(f"{png_uri}: unreadable mask image ({exc})") from None
        uri = png_uri
    else:
        raise RawDataError(f"{npy_uri}: missing (superpoints.method=masks needs a .npy or .png mask per frame)")
    if masks.ndim != 2:
        raise RawDataError(f"{uri}: expected a 2D mask image, got shape {masks.shape}")
    if masks.shape != shape:
        # Nearest-neighbour resampling keeps mask ids intact.
        rows = (np.arange(shape[0]) * masks.shape[0] / shape[0]).astype(int)
        cols = (np.arange(shape[1]) * masks.shape[1] / shape[1]).astype(int)
        masks = masks[rows][:, cols]
    return masks


def combine_with_fallback(masks: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Mask ids where covered (>= 0), fallback segments (offset past the mask ids) elsewhere."""
    offset = int(masks.max()) + 1 if masks.size else 0
    return np.where(masks >= 0, masks, fallback + max(offset, 0))


def lift_to_points(segment_image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Superpoint ids `(N,)` int64, contiguous from 0, for points with source pixels (N, 2) as (u, v)."""
    ids = segment_image[pixels[:, 1], pixels[:, 0]]
    _, contiguous = np.unique(ids, return_inverse=True)
    return contiguous.astype(np.int64)
