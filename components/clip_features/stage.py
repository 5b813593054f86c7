"""`bifusion clip-precompute`: CLIP features of every image the SV and MV sets reference, stored once.

BiFusion trains on stored features while the CLIP tower is frozen (a ViT-B/16 forward costs seconds per
image on a CPU). Images are read and decoded by `clip.workers` threads while the tower runs batches of
`clip.batch_size` on `clip.device`; feature files are published atomically, one per image, so an
interrupted run resumes by skipping the files that exist (see `features.py` for the layout). A validation
step then recomputes a sample of stored features image by image with `clip_image_features` and fails the
stage when they differ by more than `clip.max_l2_tolerance`.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from open_clip.transformer import VisionTransformer
from tqdm import tqdm

from bifusion.components.clip_features.features import (
    FEATURES_DIR,
    MANIFEST_FILE,
    decode_feature_file,
    encode_feature_file,
    feature_file_uri,
    image_relpath,
)
from bifusion.components.clip_features.weights import load_clip_tower, resolve_device
from bifusion.components.config import fingerprint, to_yaml
from bifusion.components.config_schema import ClipConfig, Config
from bifusion.components.prep.esam_format import INFO_FILE_NAMES, read_infos
from bifusion.components.scannet_raw import decode_color
from bifusion.components.storage import Storage, join_uri
from bifusion.components.tracking import stage_run
from bifusion.model.clip_branch import clip_image_features, patch_token_map, preprocess_images

# Batches whose images are read ahead of the one on the tower: enough to hide decoding behind a forward pass.
PREFETCH_BATCHES = 2


class ClipPrecomputeError(RuntimeError):
    """The inputs cannot be precomputed (no info files, images from several raw roots, ...)."""


class ClipValidationError(RuntimeError):
    """Stored features differ from features recomputed online by more than `clip.max_l2_tolerance`."""


@dataclass(frozen=True)
class ClipPrecomputeResult:
    feature_uri: str
    images_total: int
    computed: int
    skipped: int  # already stored (resumed or shared with an earlier run)
    validated: int
    max_l2: float  # largest L2 distance of a stored patch feature (D values) from its online recomputation
    info_uris: dict[str, list[str]]  # set URI -> info files with clip_feature_path(s) (clip.write_infos)
    summary: dict[str, Any]


@dataclass(frozen=True)
class SetImages:
    """The info files of one prepared set and the images their records reference."""

    set_uri: str
    raw_root: str
    infos: dict[str, dict[str, Any]]  # info file URI -> its mmdet3d-v2 dict
    relpaths: list[str]  # image paths relative to raw_root, in record order (with repeats)


def record_image_paths(record: dict[str, Any]) -> list[str]:
    """Image paths of one info record: `img_path` (SV) or `img_paths` (MV); none for scene records."""
    if "img_path" in record:
        return [record["img_path"]]
    return list(record.get("img_paths", []))


def read_set_images(storage: Storage, set_uri: str, splits: list[str]) -> SetImages:
    """Read the SV/MV info files of `set_uri` for `splits` (named as prep names them)."""
    infos = {}
    for kind in ("sv", "mv"):
        for split in splits:
            uri = join_uri(set_uri, INFO_FILE_NAMES[kind].format(split=split))
            if storage.exists(uri):
                infos[uri] = read_infos(storage, uri)
    if not infos:
        expected = [INFO_FILE_NAMES[kind].format(split=split) for kind in ("sv", "mv") for split in splits]
        raise ClipPrecomputeError(f"{set_uri}: no SV/MV info files (looked for {expected}; splits from prep.split_files)")
    raw_roots = {info.get("metainfo", {}).get("raw_uri") for info in infos.values()}
    if len(raw_roots) != 1 or None in raw_roots:
        raise ClipPrecomputeError(f"{set_uri}: info files name raw roots {sorted(map(str, raw_roots))} (metainfo.raw_uri); expected exactly one")
    raw_root = raw_roots.pop()
    relpaths = []
    for uri, info in infos.items():
        for index, record in enumerate(info["data_list"]):
            try:
                relpaths.extend(image_relpath(path, raw_root) for path in record_image_paths(record))
            except ValueError as exc:
                raise ClipPrecomputeError(f"{uri}: data_list[{index}]: {exc}") from None
    return SetImages(set_uri, raw_root, infos, relpaths)


def clip_fingerprint(clip: ClipConfig, weights_id: str, raw_root: str) -> str:
    """Identity of a feature store: what changes the values (not batch size, workers or device)."""
    return fingerprint(clip.model_name, weights_id, list(clip.input_size), raw_root)


def encode_batch(visual: VisionTransformer, images: list[np.ndarray]) -> torch.Tensor:
    """`clip_image_features` of images that may differ in size: each is resized on its own, then one forward."""
    if any(module.training for module in visual.modules()):
        raise ValueError("visual: expected eval mode for stored CLIP features, call visual.eval() first")
    pixels = torch.cat([preprocess_images(image, visual) for image in images])
    with torch.no_grad():
        return patch_token_map(visual, pixels).half()


def _load_image(storage: Storage, raw_root: str, relpath: str) -> np.ndarray:
    uri = join_uri(raw_root, relpath)
    return decode_color(storage.read_bytes(uri), uri).copy()  # PIL's array is read-only; torch warns on those


def compute_features(
    storage: Storage, visual: VisionTransformer, raw_root: str, feature_uri: str, relpaths: list[str],
    batch_size: int, workers: int, on_batch: Callable[[int], None] | None = None,
) -> None:
    """Compute and publish the features of `relpaths`, reading ahead and writing behind in `workers` threads.

    `on_batch(images_done)` is called after each batch (the stage logs progress to MLflow with it).
    """
    batches = [relpaths[start : start + batch_size] for start in range(0, len(relpaths), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(relpaths), desc="clip features", unit="image", dynamic_ncols=True) as bar:
        loading: deque[list[Future]] = deque()
        writing: list[Future] = []
        for batch_index, batch in enumerate(batches):
            while len(loading) < PREFETCH_BATCHES + 1 and batch_index + len(loading) < len(batches):
                ahead = batches[batch_index + len(loading)]
                loading.append([pool.submit(_load_image, storage, raw_root, relpath) for relpath in ahead])
            images = [future.result() for future in loading.popleft()]
            features = encode_batch(visual, images).cpu().numpy()
            for future in writing:  # the previous batch's files: bounds memory and surfaces write errors
                future.result()
            writing = [
                pool.submit(storage.write_bytes, feature_file_uri(feature_uri, relpath), encode_feature_file(array))
                for relpath, array in zip(batch, features)
            ]
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(bar.n)
        for future in writing:
            future.result()


def validate_features(
    storage: Storage, visual: VisionTransformer, raw_root: str, feature_uri: str, relpaths: list[str], samples: int,
) -> tuple[float, str | None, int]:
    """Max L2 distance (over patches, D values each) between stored and freshly recomputed features.

    Recomputes `samples` images spread evenly over `relpaths`, one at a time with `clip_image_features`,
    so that batching, the read-ahead path and the file round trip are all checked. Returns
    (max L2, the image where it occurred, images checked).
    """
    if samples <= 0 or not relpaths:
        return 0.0, None, 0
    chosen = sorted({relpaths[i] for i in np.linspace(0, len(relpaths) - 1, samples).round().astype(int)})
    worst, worst_path = 0.0, None
    for relpath in chosen:
        uri = feature_file_uri(feature_uri, relpath)
        stored = decode_feature_file(storage.read_bytes(uri), uri).astype(np.float32)
        online = clip_image_features(visual, _load_image(storage, raw_root, relpath))[0].float().cpu().numpy()
        if stored.shape != online.shape:
            raise ClipValidationError(f"{uri}: stored features {stored.shape}, recomputed {online.shape}")
        distance = float(np.linalg.norm(stored - online, axis=0).max())
        if worst_path is None or distance > worst:
            worst, worst_path = distance, relpath
    return worst, worst_path, len(chosen)


def write_feature_infos(storage: Storage, images: SetImages, feature_uri: str) -> list[str]:
    """Copies of a set's info files with `clip_feature_path` (SV) / `clip_feature_paths` (MV) added to records.

    Written under the feature store (prep's output stays as prep wrote it); `metainfo.set_uri` points back
    at the set, whose folder the records' point paths are relative to, and `metainfo.clip_feature_uri` at
    the store. The folder is `<set folder name>-<hash of the set URI>`, so sets of several preps never collide.
    """
    set_key = f"{images.set_uri.rstrip('/').rsplit('/', 1)[-1]}-{hashlib.sha256(images.set_uri.encode()).hexdigest()[:8]}"
    written = []
    for info_uri, info in images.infos.items():
        records = []
        for record in info["data_list"]:
            record = dict(record)
            if "img_path" in record:
                record["clip_feature_path"] = feature_file_uri(feature_uri, image_relpath(record["img_path"], images.raw_root))
            if "img_paths" in record:
                record["clip_feature_paths"] = [feature_file_uri(feature_uri, image_relpath(p, images.raw_root)) for p in record["img_paths"]]
            records.append(record)
        metainfo = {**info["metainfo"], "set_uri": images.set_uri, "clip_feature_uri": feature_uri}
        target = join_uri(feature_uri, "infos", set_key, info_uri.rsplit("/", 1)[-1])
        storage.write_bytes(target, pickle.dumps({"metainfo": metainfo, "data_list": records}, protocol=4))
        written.append(target)
    return written


def run_clip_precompute(config: Config, set_uris: list[str]) -> ClipPrecomputeResult:
    """Store the CLIP features of every image referenced by the SV/MV info files of `set_uris`."""
    clip = config.clip
    storage = Storage(config.storage, config.workdir)
    if not set_uris:
        raise ClipPrecomputeError("no set URIs given (--set-uri): pass the sv/ and mv/ folders of a prep output")
    sets = [read_set_images(storage, storage.resolve(uri), list(config.prep.split_files)) for uri in set_uris]
    raw_roots = sorted({s.raw_root for s in sets})
    if len(raw_roots) != 1:
        raise ClipPrecomputeError(f"sets {set_uris} come from several raw roots {raw_roots}; run clip-precompute once per raw root")
    raw_root = raw_roots[0]
    relpaths = sorted({relpath for s in sets for relpath in s.relpaths})

    device = resolve_device(clip.device)
    tower = load_clip_tower(clip, storage, device)
    feature_uri = join_uri(storage.root, clip.feature_root, clip_fingerprint(clip, tower.weights_id, raw_root))
    sections = {"workdir": config.workdir, "storage": config.storage, "clip": clip}
    tags = {"bifusion.input.set_uris": ",".join(s.set_uri for s in sets), "bifusion.output_uri": feature_uri}
    with stage_run("clip_precompute", config, sections, tags) as run:
        started = time.monotonic()
        storage.write_text(join_uri(feature_uri, "config.yaml"), to_yaml(sections))
        storage.write_json(join_uri(feature_uri, MANIFEST_FILE), {
            "model_name": clip.model_name, "weights": clip.weights, "weights_id": tower.weights_id,
            "input_size": list(clip.input_size), "raw_root": raw_root,
        })
        stored = set(storage.list(join_uri(feature_uri, FEATURES_DIR)))
        todo = [relpath for relpath in relpaths if feature_file_uri(feature_uri, relpath) not in stored]
        run.log_metrics({"images_total": len(relpaths), "images_skipped": len(relpaths) - len(todo)})

        compute_started = time.monotonic()
        compute_features(
            storage, tower.visual, raw_root, feature_uri, todo, clip.batch_size, clip.workers,
            on_batch=lambda done: run.log_metrics({"images_done": done}, step=done),
        )
        compute_seconds = time.monotonic() - compute_started
        max_l2, worst, validated = validate_features(storage, tower.visual, raw_root, feature_uri, relpaths, clip.validate_samples)
        summary = {
            "images_total": len(relpaths), "computed": len(todo), "skipped": len(relpaths) - len(todo),
            "validated": validated, "max_l2": max_l2, "max_l2_image": worst, "device": str(device),
            "images_per_second": round(len(todo) / compute_seconds, 3) if todo and compute_seconds else 0.0,
            "seconds": round(time.monotonic() - started, 3),
        }
        run.log_metrics({k: summary[k] for k in ("computed", "validated", "max_l2", "images_per_second")})
        run.log_dict(summary, "summary.json")
        if max_l2 >= clip.max_l2_tolerance:
            raise ClipValidationError(
                f"stored CLIP features of {worst} in {feature_uri} differ from a fresh recomputation by L2 {max_l2:.3g} "
                f">= clip.max_l2_tolerance={clip.max_l2_tolerance:g}; delete that store and re-run"
            )
        info_uris = {s.set_uri: write_feature_infos(storage, s, feature_uri) for s in sets} if clip.write_infos else {}
        summary["info_uris"] = info_uris
        storage.write_json(join_uri(feature_uri, "summary.json"), summary)
    return ClipPrecomputeResult(feature_uri, len(relpaths), len(todo), len(relpaths) - len(todo), validated, max_l2, info_uris, summary)
