"""Checkpoints in the store: numbered snapshots, the latest pointer, pruning, and loading back."""

from __future__ import annotations

import pytest
import torch

from bifusion.components.config_schema import load_config
from bifusion.components.storage import NotFoundError, Storage
from bifusion.components.train.checkpoints import KEEP_SNAPSHOTS, CheckpointStore, load_checkpoint


@pytest.fixture(params=["local", "s3"])
def storage_and_root(request, tmp_path):
    if request.param == "local":
        return Storage(load_config(["base"]).storage, tmp_path), str(tmp_path / "run")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    storage = Storage(load_config(["base"], [f"storage.endpoint_url={endpoint}"]).storage, tmp_path)
    return storage, f"s3://{bucket}/run"


def test_snapshots_pointer_and_pruning(storage_and_root) -> None:
    storage, root = storage_and_root
    store = CheckpointStore(storage, root)
    assert store.latest() is None
    for iteration in (10, 20, 30, 40):
        store.save_snapshot({"iteration": iteration, "weights": torch.full((3,), float(iteration))}, iteration)
    assert store.latest() == store.uri("iter_00000040.pt")
    kept = [uri.rsplit("/", 1)[-1] for uri in storage.list(store.root) if "iter_" in uri]
    assert kept == [f"iter_{i:08d}.pt" for i in (30, 40)][-KEEP_SNAPSHOTS:]
    state = load_checkpoint(storage, store.latest())
    assert state["iteration"] == 40
    assert torch.equal(state["weights"], torch.full((3,), 40.0))


def test_missing_checkpoint_is_a_clear_error(storage_and_root) -> None:
    storage, root = storage_and_root
    with pytest.raises(NotFoundError, match="checkpoint .*final.pt not found"):
        load_checkpoint(storage, f"{root}/checkpoints/final.pt")
