"""The CLIP tower that `clip:` configures: weights from a file or URI, or seeded random weights for demos/tests.

There is no network in the places this runs (KFP pods, CI), so open_clip's download tags are not accepted:
`clip.weights` names a checkpoint (a full open_clip state dict), or is "random". Every feature store is
named by a fingerprint that includes `weights_id` (the checkpoint's SHA-256), so features from other weights
are never reused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.transformer import VisionTransformer

from bifusion.components.config_schema import ClipConfig
from bifusion.components.storage import Storage, is_s3_uri, local_path, sha256_of_file
from bifusion.model.clip_branch import load_clip_visual

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
RANDOM_WEIGHTS_SEED = 0


class ClipWeightsError(ValueError):
    """`clip.weights` does not name a loadable checkpoint; the message says which file and why."""


@dataclass(frozen=True)
class ClipTower:
    """A frozen visual tower on its device, and the identity of its weights (for fingerprints)."""

    visual: VisionTransformer
    weights_id: str  # "sha256:<hex>" of the checkpoint file, or "random-seed<N>"


def resolve_device(name: str) -> torch.device:
    """`clip.device`: auto -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("clip.device=cuda but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)


def local_weights_file(clip: ClipConfig, storage: Storage) -> Path:
    """The checkpoint as a local file: a local path as is, an s3:// URI downloaded once into the workdir cache."""
    if clip.weights is None:
        raise ClipWeightsError(
            "clip.weights is null: set it to an open_clip checkpoint file or URI (a full CLIP state dict, "
            f"e.g. {clip.model_name} weights saved with torch.save), or to 'random' for demos/tests; "
            "weights are never downloaded"
        )
    uri = storage.resolve(clip.weights)
    if is_s3_uri(uri):
        target = storage.workdir / "cache" / "clip_weights" / hashlib.sha256(uri.encode()).hexdigest()[:16] / uri.rsplit("/", 1)[-1]
        if not target.is_file():
            if not storage.exists(uri):
                raise ClipWeightsError(f"clip.weights={clip.weights!r}: {uri} does not exist")
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.download_file(uri, target)
        return target
    path = local_path(uri)
    if not path.is_file():
        raise ClipWeightsError(f"clip.weights={clip.weights!r}: no such file {path}")
    return path


def load_clip_tower(clip: ClipConfig, storage: Storage, device: torch.device) -> ClipTower:
    """Build `clip.model_name` at `clip.input_size` with `clip.weights`, frozen, in eval mode, on `device`."""
    input_size = tuple(clip.input_size)
    if clip.weights == RANDOM_WEIGHTS:
        log.warning(
            "clip.weights=random: seeded random CLIP weights (seed %d); features carry no image semantics "
            "(for demos and tests only)", RANDOM_WEIGHTS_SEED,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            visual = load_clip_visual(clip.model_name, None, input_size)
        return ClipTower(visual.to(device), f"random-seed{RANDOM_WEIGHTS_SEED}")
    path = local_weights_file(clip, storage)
    try:
        visual = load_clip_visual(clip.model_name, str(path), input_size)
    except Exception as exc:  # open_clip raises RuntimeError/KeyError/pickle errors: all mean "not this model's checkpoint"
        raise ClipWeightsError(
            f"clip.weights={clip.weights!r}: {path} is not a loadable {clip.model_name} open_clip checkpoint "
            f"({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc
    return ClipTower(visual.to(device), f"sha256:{sha256_of_file(path)}")
