"""The training stage: steps, checkpoints, resume after a kill, skipped non-finite steps, DDP with gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bifusion.components.config import to_yaml
from bifusion.components.storage import Storage
from bifusion.components.train.checkpoints import load_checkpoint
from bifusion.components.train.distributed import DistributedContext
from bifusion.components.train.recipes import TrainingRecipe
from bifusion.components.train.stage import _train_step, run_train


def test_training_writes_checkpoints_metrics_and_validation(train_config, tiny_sv_set: str, mlflow_uri: str) -> None:
    config = train_config("train.max_iterations=4", "train.checkpoint_every_iterations=2")
    result = run_train(config, "3d_sv", tiny_sv_set)
    assert result.iterations == 4
    storage = Storage(config.storage, config.workdir)
    final = load_checkpoint(storage, result.checkpoint_uri)
    assert final["iteration"] == 4 and final["stage"] == "3d_sv"
    assert final["config"]["model"]["backbone"]["planes"] == [16, 16, 32, 32, 32, 32, 32, 32]
    assert storage.exists(f"{result.output_uri}/checkpoints/latest.json")
    assert "scannet200/ap50" in result.metrics
    client = MlflowClient(mlflow_uri)
    run_id = json.loads(storage.read_text(f"{result.output_uri}/summary.json"))  # summary is in the store too
    assert run_id["iterations"] == 4
    (run,) = client.search_runs(
        [client.get_experiment_by_name("train-tests").experiment_id], f"tags.`bifusion.output_uri` = '{result.output_uri}'"
    )
    history = client.get_metric_history(run.info.run_id, "loss/total")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert run.data.params["train.lr"] == "0.001"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss_curves.png", "plots/lr_schedule.png"}
    assert client.get_metric_history(run.info.run_id, "system/iteration_seconds")
    assert client.get_metric_history(run.info.run_id, "system/host_peak_rss_mb")[0].value > 0


class _NaNCriterion(torch.nn.Module):
    def forward(self, outputs, targets):
        total = sum(o.final.class_logits.sum() for o in outputs) * float("nan")
        return {"total": total}


def test_non_finite_loss_skips_the_step_without_touching_weights(train_config, tiny_sv_set: str) -> None:
    from bifusion.components.datasets.batching import FrameCollator
    from bifusion.components.datasets.point_frames import SingleViewDataset
    from bifusion.components.train.model_factory import build_single_view_model

    config = train_config()
    model = build_single_view_model(config.model)
    dataset = SingleViewDataset(Path(tiny_sv_set), "train", None, 0.02, 0)
    batch = FrameCollator(False)([dataset[0], dataset[1]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = {"iteration": 0, "skipped": 0}
    recipe = TrainingRecipe(config, "3d_sv")
    result = _train_step(recipe, model, _NaNCriterion(), optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False),
                         batch, config.train, torch.device("cpu"), DistributedContext(0, 1, 0), state)
    assert result is None and state["skipped"] == 1
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    assert scheduler.last_epoch == 0


def bifusion_train(config, data_uri: str, tmp_path: Path, launcher: list[str]) -> list[str]:
    """Command line of `bifusion train` for `config` (written whole to one YAML file, so --config reproduces it)."""
    config_file = tmp_path / "resolved.yaml"
    config_file.write_text(to_yaml(config))
    return [*launcher, "-m", "bifusion.pipelines.cli", "train", "--stage", "3d_sv", "--data", data_uri, "--config", str(config_file)]


def test_killed_training_resumes_from_the_last_snapshot(train_config, tiny_sv_set: str, mlflow_uri: str, tmp_path: Path) -> None:
    config = train_config("train.max_iterations=12", "train.checkpoint_every_iterations=3")
    process = subprocess.Popen(
        bifusion_train(config, tiny_sv_set, tmp_path, [sys.executable]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    pointer = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        pointers = list(Path(config.workdir).glob("store/train/3d_sv/*/checkpoints/latest.json"))
        if pointers and json.loads(pointers[0].read_text())["iteration"] >= 3:
            pointer = pointers[0]
            break
        time.sleep(0.1)
    if pointer is None:
        process.kill()
        pytest.fail(f"no snapshot before the run ended: {process.stderr.read().decode()[-2000:]}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(pointer.read_text())["iteration"]
    assert killed_at < 12
    storage = Storage(config.storage, config.workdir)
    snapshot = load_checkpoint(storage, json.loads(pointer.read_text())["uri"])
    run_id = snapshot["progress"]["mlflow_run_id"]
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody closed it

    result = run_train(config, "3d_sv", tiny_sv_set)
    assert result.iterations == 12
    assert client.get_run(run_id).info.status == "FINISHED"  # the same run was continued and closed
    steps = [m.step for m in client.get_metric_history(run_id, "loss/total")]
    assert steps[-1] == 12 and set(range(killed_at + 1, 13)) <= set(steps)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_and_gloo(train_config, tiny_sv_set: str, tmp_path: Path) -> None:
    config = train_config("train.max_iterations=3", "train.batch_size=2", "train.checkpoint_every_iterations=3")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    completed = subprocess.run(
        bifusion_train(config, tiny_sv_set, tmp_path, torchrun), capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout[completed.stdout.index("{") :])
    assert result["iterations"] == 3
    storage = Storage(config.storage, config.workdir)
    final = load_checkpoint(storage, result["checkpoint_uri"])
    assert final["iteration"] == 3
    # Both processes stepped together: DDP keeps their weights identical, so one checkpoint describes both.
    assert "world_size=2" in completed.stderr
