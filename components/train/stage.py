"""`bifusion train --stage STAGE`: train one model stage on a prepared set (its recipe says what differs).

Reads top to bottom like a plain PyTorch loop: data, model, optimiser, resume, steps, checkpoints,
validation. Checkpoints go to the store every `checkpoint_every_iterations` and at the end; a restarted
run (after a kill, a preemption, a KFP retry) resumes from the newest snapshot with the same data order,
and keeps logging into the same MLflow run. Launch with `torchrun --nproc_per_node N` for DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bifusion.components.config import fingerprint, to_tree, to_yaml
from bifusion.components.config_schema import Config
from bifusion.components.datasets.point_frames import seed_worker
from bifusion.components.evaluate.frame_evaluation import EvaluationReport
from bifusion.components.storage import Storage, join_uri
from bifusion.components.run_pictures import log_training_plots
from bifusion.components.system_metrics import StepRecorder, mlflow_system_metrics
from bifusion.components.tracking import resolve_tracking_uri, stage_run
from bifusion.components.train.checkpoints import CheckpointStore, load_checkpoint
from bifusion.components.train.distributed import DistributedContext, init_distributed, shutdown_distributed
from bifusion.components.train.sampling import ResumableSampler
from bifusion.components.train.recipes import TrainingRecipe, recipe_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    output_uri: str
    checkpoint_uri: str  # final weights
    best_checkpoint_uri: str | None  # best by `train.best_metric` on the validation split
    iterations: int
    skipped_steps: int  # steps whose loss was not finite (skipped, never trained on)
    metrics: dict[str, float]  # last validation summary


def train_output_uri(
    storage: Storage, stage: str, config: Config, data_uri: str, init_uri: str | None, clip_features_uri: str | None = None
) -> str:
    """Where a stage's checkpoints live: keyed by what shapes the weights (not workers or device)."""
    train = dataclasses.replace(config.train, num_workers=0, device="auto", log_every_iterations=0)
    inputs = (data_uri, init_uri) if clip_features_uri is None else (data_uri, init_uri, clip_features_uri)
    return join_uri(storage.root, "train", stage, fingerprint(config.model, train, *inputs))


def pick_device(choice: str, context: DistributedContext) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    torch.cuda.set_device(context.local_rank)
    return torch.device("cuda", context.local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def poly_lr_factor(iteration: int, total: int, power: float) -> float:
    """ESAM's PolyLR: lr = base * (1 - progress) ** power (per iteration here, per epoch in ESAM)."""
    return (1.0 - min(iteration, total) / max(total, 1)) ** power


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class _NoTracking:
    """Stands in for the MLflow run on non-main DDP processes."""

    run_id = None

    def log_metrics(self, *args: Any, **kwargs: Any) -> None: ...

    def log_dict(self, *args: Any, **kwargs: Any) -> None: ...

    def log_text(self, *args: Any, **kwargs: Any) -> None: ...

    def log_artifact(self, *args: Any, **kwargs: Any) -> None: ...

    def set_tags(self, *args: Any, **kwargs: Any) -> None: ...


def _tracking(context: DistributedContext, *args: Any, **kwargs: Any) -> contextlib.AbstractContextManager:
    return stage_run(*args, **kwargs) if context.is_main else contextlib.nullcontext(_NoTracking())


def _loader(dataset: Dataset, sampler: ResumableSampler, batch_size: int, workers: int, collate: Callable[[list[Any]], Any]) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
        worker_init_fn=seed_worker, persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _log_report(run: Any, report: EvaluationReport, iteration: int, prefix: str) -> None:
    finite = {f"{prefix}/{k}": v for k, v in report.summary.items() if math.isfinite(v)}
    run.log_metrics(finite, step=iteration)


def run_train(
    config: Config, stage: str, data_uri: str, init_checkpoint_uri: str | None = None, output_uri: str | None = None,
    clip_features_uri: str | None = None,
) -> TrainResult:
    """Train `stage` on the set at `data_uri`; `init_checkpoint_uri` (or `train.init_checkpoint`) seeds the
    backbone by partial loading. Returns where the checkpoints are."""
    recipe = recipe_for(config, stage, clip_features_uri)
    train = config.train
    device_kind = "cuda" if train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available()) else "cpu"
    context = init_distributed(device_kind)
    try:
        return _train(recipe, data_uri, init_checkpoint_uri or train.init_checkpoint, output_uri, context)
    finally:
        shutdown_distributed(context)


def _train(
    recipe: TrainingRecipe, data_uri: str, init_uri: str | None, output_uri: str | None, context: DistributedContext
) -> TrainResult:
    config, stage = recipe.config, recipe.stage
    train = config.train
    storage = Storage(config.storage, config.workdir)
    data_uri = storage.resolve(data_uri)
    output_uri = storage.resolve(output_uri or train_output_uri(storage, stage, config, data_uri, init_uri, recipe.clip_features_uri))
    device = pick_device(train.device, context)
    if context.enabled and device.type == "cpu":
        # Several processes on one CPU: more OpenMP threads than cores makes every op wait for descheduled peers.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))))
    log.info("train %s: rank %d of world_size=%d on %s", stage, context.rank, context.world_size, device)
    seed_everything(train.seed + context.rank)
    if train.batch_size % context.world_size:
        raise ValueError(f"train.batch_size={train.batch_size} must be divisible by the {context.world_size} processes")
    per_process_batch = train.batch_size // context.world_size

    # Data: the main process copies a remote set into the cache first; the others then find it complete.
    cache = Path(config.workdir) / "cache" / "sets"
    if context.is_main:
        set_dir = recipe.materialise(storage, data_uri, cache)
    context.barrier()
    if not context.is_main:
        set_dir = recipe.materialise(storage, data_uri, cache)
    train_set, val_set = recipe.datasets(set_dir)
    collate = recipe.collate()
    sampler = ResumableSampler(len(train_set), train.seed, context.rank, context.world_size)
    val_loader = DataLoader(val_set, batch_size=per_process_batch, collate_fn=collate, num_workers=train.num_workers)
    iterations_per_epoch = math.ceil(sampler.per_process() / per_process_batch)
    total = train.epochs * iterations_per_epoch
    if train.max_iterations is not None:
        total = min(total, train.max_iterations)

    model = recipe.build_model().to(device)
    criterion = recipe.build_criterion().to(device)
    optimizer = torch.optim.AdamW(recipe.parameter_groups(model), lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_lr_factor(it, total, train.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and train.amp == "fp16")
    checkpoints = CheckpointStore(storage, output_uri)

    state: dict[str, Any] = {"iteration": 0, "epoch": 0, "best": None, "skipped": 0, "mlflow_run_id": None}
    resume_uri = checkpoints.latest()
    init_report = None
    if resume_uri is not None:
        snapshot = load_checkpoint(storage, resume_uri, device)
        model.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
        scheduler.load_state_dict(snapshot["scheduler"])
        scaler.load_state_dict(snapshot["scaler"])
        state.update(snapshot["progress"])
        torch.set_rng_state(snapshot["torch_rng"])
        log.info("train %s: resuming at iteration %d from %s", stage, state["iteration"], resume_uri)
    elif init_uri is not None:
        initial = load_checkpoint(storage, storage.resolve(init_uri))
        init_report = recipe.initialise(model, initial)
        log.info("train %s: initialised from %s:\n%s", stage, init_uri, init_report.summary())
        if not init_report.loaded:
            raise ValueError(f"{init_uri}: no tensor matched the {stage} model (prefix map {train.init_prefix_map}):\n{init_report.summary()}")

    ddp_model = model
    if context.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    sections = {"workdir": config.workdir, "storage": config.storage, "model": config.model, "train": train, "evaluate": config.evaluate}
    tags = {"bifusion.input.data_uri": data_uri, "bifusion.output_uri": output_uri, "bifusion.train_stage": stage}
    if init_uri:  # `bifusion rerun` starts from the same checkpoint
        tags["bifusion.input.init_checkpoint_uri"] = init_uri
    if recipe.clip_features_uri:
        tags["bifusion.input.clip_features_uri"] = recipe.clip_features_uri
    with _tracking(context, f"train_{stage}", config, sections, tags, resume_run_id=state["mlflow_run_id"]) as run, contextlib.ExitStack() as stack:
        state["mlflow_run_id"] = run.run_id
        if context.is_main:
            storage.write_text(join_uri(output_uri, "config.yaml"), to_yaml(sections))
            if init_report is not None:
                run.log_text(init_report.summary(), "init_weights_report.txt")

        def snapshot_state() -> dict[str, Any]:
            return {
                "model": _unwrap(ddp_model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "progress": dict(state),
                "torch_rng": torch.get_rng_state(), "config": to_tree(sections), "stage": stage,
            }

        def validate() -> EvaluationReport | None:
            report = None
            if context.is_main:
                report = recipe.validate(model, val_loader, device)
                _log_report(run, report, state["iteration"], "val")
                metric = report.summary.get(train.best_metric, float("nan"))
                if math.isfinite(metric) and (state["best"] is None or metric > state["best"]):
                    state["best"] = metric
                    checkpoints.save({"model": model.state_dict(), "config": to_tree(sections), "stage": stage,
                                      "iteration": state["iteration"], "metric": {train.best_metric: metric}}, "best.pt")
                log.info("train %s: validation at iteration %d: %s", stage, state["iteration"],
                         {k: round(v, 4) for k, v in report.summary.items()})
            context.barrier()
            return report

        recorder = StepRecorder(device)
        if context.is_main:
            system_metrics = stack.enter_context(mlflow_system_metrics(run.run_id, resolve_tracking_uri(config.tracking, config.workdir)))
            log.debug("MLflow system metrics %s", "on" if system_metrics else "off")
        report = None
        bar = tqdm(total=total, initial=state["iteration"], desc=f"train {stage}", unit="it", disable=not context.is_main, dynamic_ncols=True)
        ddp_model.train()
        while state["iteration"] < total:
            epoch = state["epoch"]
            train_set.set_epoch(epoch)
            position = state["iteration"] - epoch * iterations_per_epoch
            sampler.set_position(epoch, position * per_process_batch)
            epoch_losses: list[float] = []
            for batch in _loader(train_set, sampler, per_process_batch, train.num_workers, collate):
                started = time.perf_counter()
                recorder.step_started()
                recipe.begin_iteration(_unwrap(ddp_model), state["iteration"])
                loss_value = _train_step(recipe, ddp_model, criterion, optimizer, scheduler, scaler, recipe.batch_to(batch, device), train, device, context, state)
                recorder.step_finished(per_process_batch)
                state["iteration"] += 1
                bar.update(1)
                if loss_value is not None:
                    epoch_losses.append(loss_value["total"])
                    if context.is_main and state["iteration"] % train.log_every_iterations == 0:
                        seconds = time.perf_counter() - started
                        metrics = {f"loss/{k}": v for k, v in loss_value.items()}
                        metrics.update({"lr": scheduler.get_last_lr()[0], "iteration_seconds": seconds,
                                        "samples_per_second": train.batch_size / seconds, "skipped_steps": state["skipped"]})
                        metrics.update(recorder.metrics())
                        run.log_metrics(metrics, step=state["iteration"])
                        bar.set_postfix(loss=f"{loss_value['total']:.3f}")
                stage_metrics = recipe.pop_metrics()
                if context.is_main and stage_metrics:
                    run.log_metrics(stage_metrics, step=state["iteration"])
                if context.is_main and state["iteration"] % train.checkpoint_every_iterations == 0:
                    checkpoints.save_snapshot(snapshot_state(), state["iteration"])
                if state["iteration"] >= total or state["iteration"] - epoch * iterations_per_epoch >= iterations_per_epoch:
                    break
            state["epoch"] = epoch + 1
            if context.is_main and epoch_losses:
                run.log_metrics({"epoch/loss": float(np.mean(epoch_losses)), "epoch": epoch}, step=state["iteration"])
            finished = state["iteration"] >= total
            if finished or (train.validate_every_epochs and state["epoch"] % train.validate_every_epochs == 0):
                report = validate()
        bar.close()

        final_uri = checkpoints.uri("final.pt")
        if context.is_main:
            if report is None:
                report = validate()
            final_uri = checkpoints.save({"model": model.state_dict(), "config": to_tree(sections), "stage": stage,
                                          "iteration": state["iteration"]}, "final.pt")
            checkpoints.save_snapshot(snapshot_state(), state["iteration"])
            summary = {
                "iterations": state["iteration"], "skipped_steps": state["skipped"], "best_metric": train.best_metric,
                "best_value": state["best"], "validation": report.summary if report else {},
                "checkpoint_uri": final_uri,
            }
            storage.write_json(join_uri(output_uri, "summary.json"), summary)
            run.log_dict(summary, "summary.json")
            log_training_plots(run, getattr(recipe, "alpha_history", ()))
            run.set_tags({"bifusion.output.checkpoint_uri": final_uri})
        context.barrier()
    best_uri = checkpoints.uri("best.pt") if state["best"] is not None else None
    return TrainResult(output_uri, final_uri, best_uri, state["iteration"], state["skipped"], report.summary if report else {})


def _train_step(
    recipe: TrainingRecipe, model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, scaler: torch.amp.GradScaler, batch: Any, train: Any, device: torch.device,
    context: DistributedContext, state: dict[str, Any],
) -> dict[str, float] | None:
    """One optimisation step; returns the loss terms, or None when a non-finite loss made every process skip it."""
    with autocast_context(device, train.amp):
        losses = recipe.losses(model, criterion, batch)
    total = losses["total"]
    if context.any_true(not bool(torch.isfinite(total)), device):
        state["skipped"] += 1
        log.warning("iteration %d: non-finite loss (%s); step skipped (%d so far)", state["iteration"], total.item(), state["skipped"])
        optimizer.zero_grad(set_to_none=True)
        return None  # no optimiser step, so no scheduler step: the schedule counts updates
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return {key: float(value.detach()) for key, value in losses.items()}
