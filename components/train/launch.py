"""Start a training stage inside one pod: in this process on zero or one GPU, with torchrun on several.

The cluster placement sets `BIFUSION_GPUS_PER_POD` to the GPUs the pod was given. DDP needs one process per
GPU, so with more than one this process becomes a launcher: it writes the resolved config to a file, runs
`torchrun --nproc-per-node N` on the same `bifusion train` command a user would type, and reads back the
result JSON that rank 0 writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from bifusion.components.train.stage import TrainResult

GPUS_PER_POD_ENV = "BIFUSION_GPUS_PER_POD"


def gpus_per_pod(environ: Mapping[str, str] = os.environ) -> int:
    """GPUs the placement gave this pod (0 when unset: local runs, `docker run`)."""
    text = environ.get(GPUS_PER_POD_ENV, "0").strip() or "0"
    if not text.isdigit():
        raise ValueError(f"{GPUS_PER_POD_ENV}={text!r}: expected a whole number of GPUs")
    return int(text)


def torchrun_command(
    processes: int, config_path: Path, stage: str, data_uri: str, init_checkpoint_uri: str | None,
    clip_features_uri: str | None, result_path: Path,
) -> list[str]:
    """`torchrun --standalone` (one node, rendezvous on localhost) around `bifusion train`."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
        "-m", "bifusion.pipelines.cli", "train", "--stage", stage, "--data", data_uri,
        "--config", str(config_path), "--result-json", str(result_path),
    ]
    if init_checkpoint_uri:
        command += ["--init", init_checkpoint_uri]
    if clip_features_uri:
        command += ["--clip-features", clip_features_uri]
    return command


def train_in_pod(
    config_json: str, stage: str, data_uri: str, init_checkpoint_uri: str | None = None,
    clip_features_uri: str | None = None, environ: Mapping[str, str] = os.environ,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> TrainResult:
    """Train `stage` with every GPU of the pod; `config_json` is the fully resolved stage config."""
    processes = gpus_per_pod(environ)
    if processes <= 1:
        from bifusion.components.config_schema import config_from_json
        from bifusion.components.train.stage import run_train

        return run_train(config_from_json(config_json), stage, data_uri, init_checkpoint_uri, clip_features_uri=clip_features_uri)
    with tempfile.TemporaryDirectory(prefix=f"bifusion-train-{stage}-") as tmp:
        # A resolved config is complete, so as the last --config file it overrides the experiment defaults.
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_json)
        result_path = Path(tmp) / "result.json"
        command = torchrun_command(processes, config_path, stage, data_uri, init_checkpoint_uri, clip_features_uri, result_path)
        completed = run(command, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"torchrun with {processes} processes for stage {stage} exited with {completed.returncode}: {' '.join(command)}")
        if not result_path.is_file():
            raise RuntimeError(f"torchrun for stage {stage} succeeded but rank 0 wrote no result to {result_path}")
        from bifusion.components.train.stage import TrainResult

        return TrainResult(**json.loads(result_path.read_text()))
