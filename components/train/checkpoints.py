"""Training checkpoints in the store: numbered snapshots, a `latest.json` pointer, `best.pt`, `final.pt`.

Each file is written locally, then published through `Storage` (atomic, SHA-256 checked on download);
the pointer is published after the file it names, so a reader never follows it to a partial checkpoint.
A run that dies between the two simply resumes from the previous snapshot.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from bifusion.components.storage import NotFoundError, Storage, join_uri

KEEP_SNAPSHOTS = 2


class CheckpointStore:
    """Checkpoints of one training stage under `<output>/checkpoints/`."""

    def __init__(self, storage: Storage, output_uri: str):
        self.storage = storage
        self.root = join_uri(output_uri, "checkpoints")

    def uri(self, name: str) -> str:
        return join_uri(self.root, name)

    def save(self, state: dict[str, Any], name: str) -> str:
        """Publish `state` as `<root>/<name>` and return its URI."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            torch.save(state, path)
            uri = self.uri(name)
            self.storage.upload_file(path, uri)
        return uri

    def save_snapshot(self, state: dict[str, Any], iteration: int) -> str:
        """Numbered snapshot + `latest.json`; older snapshots beyond the last few are deleted."""
        uri = self.save(state, f"iter_{iteration:08d}.pt")
        self.storage.write_json(self.uri("latest.json"), {"iteration": iteration, "uri": uri})
        snapshots = sorted(u for u in self.storage.list(self.root) if u.rsplit("/", 1)[-1].startswith("iter_"))
        for old in snapshots[:-KEEP_SNAPSHOTS]:
            self.storage.delete(old)
        return uri

    def latest(self) -> str | None:
        """URI of the newest complete snapshot, or None for a fresh run."""
        pointer = self.uri("latest.json")
        if not self.storage.exists(pointer):
            return None
        return self.storage.read_json(pointer)["uri"]


def load_checkpoint(storage: Storage, uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Download (checksum verified) and load a checkpoint; a missing file is a clear error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        try:
            storage.download_file(uri, path)
        except NotFoundError as exc:
            raise NotFoundError(f"checkpoint {uri} not found ({exc})") from None
        return torch.load(path, map_location=map_location, weights_only=False)
