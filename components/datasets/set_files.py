"""Access to a prepared set (SV, MV or scene) on local disk, copying it from S3 once when needed.

Training reads every sample every epoch; reading them from S3 each time would make I/O the bottleneck,
so a remote set is downloaded (checksums verified) into the workdir cache once, and reused when a
completion marker says the copy is whole.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from bifusion.components.storage import Storage, is_s3_uri, local_path

_COMPLETE_MARKER = ".bifusion-complete"


def materialise_set(storage: Storage, set_uri: str, cache_root: Path) -> Path:
    """Local folder holding the set at `set_uri` (the folder itself when it is local)."""
    set_uri = storage.resolve(set_uri)
    if not is_s3_uri(set_uri):
        return local_path(set_uri)
    target = cache_root / hashlib.sha256(set_uri.encode()).hexdigest()[:16]
    if not (target / _COMPLETE_MARKER).is_file():
        storage.download_dir(set_uri, target)
        (target / _COMPLETE_MARKER).write_text(set_uri)
    return target


def read_info_list(set_dir: Path, file_name: str) -> list[dict[str, Any]]:
    """`data_list` of an mmdet3d-v2 info pickle (ours or ESAM's); only open files you trust: pickle runs code."""
    path = set_dir / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: info file missing; was prep run for this split and set?")
    with open(path, "rb") as handle:
        info = pickle.load(handle)
    if not isinstance(info, dict) or "data_list" not in info:
        raise ValueError(f"{path}: expected an mmdet3d v2 info dict with 'data_list'")
    return info["data_list"]


def read_array(path: Path, dtype: str, columns: int | None = None) -> np.ndarray:
    """A raw little-endian `.bin` array as prep/ESAM write them; `columns` reshapes to (N, columns)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    data = np.fromfile(path, dtype=dtype)
    if columns is None:
        return data
    if data.size % columns:
        raise ValueError(f"{path}: {data.size} values do not form rows of {columns}")
    return data.reshape(-1, columns)
