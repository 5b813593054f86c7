"""Where precomputed CLIP features live, and the loader-side reader that falls back to computing them online.

Layout of a feature store (`feature_uri`, written by `bifusion clip-precompute`):

    <feature_uri>/manifest.json                      model, weights id, input size, raw root
    <feature_uri>/features/<image relpath>.npy       float16 (D, h, w), e.g. (512, 15, 20) for ViT-B/16
    <feature_uri>/infos/<set>-<hash>/<info>.pkl      info files with clip_feature_path(s) (clip.write_infos)

`<image relpath>` is the image's path relative to the raw root that prep read (`metainfo.raw_uri` of the
info files), file extension kept: `<raw>/2D/scene0000_00/color/20.jpg` -> `features/2D/scene0000_00/color/20.jpg.npy`.
Relative, so the store does not depend on where the raw data was mounted when it is moved; keeping the
extension keeps two images that differ only in it apart.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from open_clip.transformer import VisionTransformer

from bifusion.components.scannet_raw import decode_color
from bifusion.components.storage import NotFoundError, Storage, is_s3_uri, join_uri
from bifusion.model.clip_branch import clip_image_features

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
MANIFEST_FILE = "manifest.json"


def image_relpath(image_path: str, raw_root: str) -> str:
    """An info file's image path (an absolute URI under `raw_root`, or already relative) -> path relative to it."""
    if "://" not in image_path and not image_path.startswith("/"):
        return image_path
    prefix = raw_root.rstrip("/") + "/"
    if not image_path.startswith(prefix):
        raise ValueError(f"image {image_path} is not under the raw root {raw_root} that its info file names (metainfo.raw_uri)")
    return image_path[len(prefix):]


def feature_file_uri(feature_uri: str, relpath: str) -> str:
    """URI of the stored features of the image at `relpath` (relative to the raw root)."""
    return join_uri(feature_uri, FEATURES_DIR, relpath + ".npy")


def encode_feature_file(features: np.ndarray) -> bytes:
    """(D, h, w) float16 -> .npy bytes."""
    if features.dtype != np.float16 or features.ndim != 3:
        raise ValueError(f"features: expected a (D, h, w) float16 array, got {features.dtype} {features.shape}")
    buffer = io.BytesIO()
    np.save(buffer, features, allow_pickle=False)
    return buffer.getvalue()


def decode_feature_file(data: bytes, uri: str) -> np.ndarray:
    try:
        features = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{uri}: not a .npy feature file ({exc})") from None
    if features.dtype != np.float16 or features.ndim != 3:
        raise ValueError(f"{uri}: expected (D, h, w) float16 features, got {features.dtype} {features.shape}")
    return features


class ClipFeatureSource:
    """Per-image CLIP features for the training loaders: the stored file, else computed online.

    `feature_uri` is a store written by `run_clip_precompute`. A local store is read in place; a remote one
    is downloaded file by file into `cache_dir` (checksums verified once, then reused). An image whose file
    is missing is computed online with `online_encoder` (the frozen tower of `load_clip_tower`; the same
    `clip_image_features` the precompute stage stores, so both paths give the same values); each such image
    counts in `missing_count`, and the first one is logged as a warning. Without an encoder a missing file
    is an error. `online_encoder_factory` builds the encoder when the first file is missing (loading a tower
    takes seconds that a complete store never needs).
    """

    def __init__(
        self, storage: Storage, feature_uri: str, cache_dir: Path, online_encoder: VisionTransformer | None = None,
        raw_root: str | None = None, online_encoder_factory: Callable[[], VisionTransformer] | None = None,
    ) -> None:
        self.storage = storage
        self.feature_uri = storage.resolve(feature_uri)
        self.cache_dir = Path(cache_dir) / hashlib.sha256(self.feature_uri.encode()).hexdigest()[:16]
        self.online_encoder = online_encoder
        self.online_encoder_factory = online_encoder_factory  # builds the tower on the first missing file only
        self._raw_root = raw_root
        self.missing_count = 0

    @property
    def raw_root(self) -> str:
        """The raw root image paths are relative to: the constructor's, else the store's manifest."""
        if self._raw_root is None:
            manifest_uri = join_uri(self.feature_uri, MANIFEST_FILE)
            try:
                self._raw_root = self.storage.read_json(manifest_uri)["raw_root"]
            except NotFoundError:
                raise NotFoundError(f"{manifest_uri}: no feature store here; run `bifusion clip-precompute` first") from None
        return self._raw_root

    def features_for(self, image_path: str) -> np.ndarray:
        """(D, h, w) float16 features of one image; `image_path` as in the info files, or relative to the raw root."""
        relpath = image_relpath(image_path, self.raw_root)
        uri = feature_file_uri(self.feature_uri, relpath)
        data = self._read(uri)
        if data is not None:
            return decode_feature_file(data, uri)
        if self.online_encoder is None and self.online_encoder_factory is not None:
            self.online_encoder = self.online_encoder_factory()
        if self.online_encoder is None:
            raise NotFoundError(f"{uri}: no precomputed CLIP features for {relpath} and no online encoder; run `bifusion clip-precompute`")
        self.missing_count += 1
        if self.missing_count == 1:
            log.warning("CLIP features missing in %s (first: %s): computing them online; missing_count counts them", self.feature_uri, relpath)
        image_uri = join_uri(self.raw_root, relpath)
        image = decode_color(self.storage.read_bytes(image_uri), image_uri).copy()  # PIL's array is read-only
        return clip_image_features(self.online_encoder, image)[0].cpu().numpy()

    def _read(self, uri: str) -> bytes | None:
        if not is_s3_uri(uri):
            try:
                return self.storage.read_bytes(uri)
            except NotFoundError:
                return None
        cached = self.cache_dir / uri[len(self.feature_uri):].lstrip("/")
        if not cached.is_file():
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                self.storage.download_file(uri, cached)
            except NotFoundError:
                return None
        return cached.read_bytes()
