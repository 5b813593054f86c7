"""Where a stage's time and memory go: per-iteration timing, throughput and peak memory, as metrics to log.

`StepRecorder` is called by a training or evaluation loop around each iteration; `metrics()` returns the
averages over the iterations since its previous call (one logging window) plus the peaks so far:

- `system/iteration_seconds`: mean wall time of one iteration in the window;
- `system/wait_seconds`: mean gap between the end of one step and the start of the next (data loading,
  logging, validation: whatever the loop does outside the steps);
- `system/samples_per_second`: samples of the window / (step time + gaps) of the window, i.e. end-to-end
  throughput; iteration_seconds against wait_seconds tells whether compute or input is the bottleneck;
- `system/host_peak_rss_mb`: peak resident memory of this process (`resource.getrusage`, stdlib), and
  `system/host_peak_rss_children_mb` that of the largest finished child (e.g. a DataLoader worker);
- `system/gpu_peak_memory_mb`: `torch.cuda.max_memory_allocated` of the device (tensors only, not the
  caching allocator's reserve), only when the recorder's device is CUDA;
- `system/gpu_utilization_percent`: the device's utilisation at the time of the call (`torch.cuda.utilization`,
  which needs the `nvidia-ml-py` package, else `nvidia-smi`), only on CUDA; omitted when neither answers.

MLflow's own system metrics (CPU, system memory, disk, network, and per-GPU utilisation and memory every
10 s) come from `mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`. It needs `psutil` (and
`nvidia-ml-py` for GPUs). `mlflow.enable_system_metrics_logging()` / `start_run(log_system_metrics=True)` only
apply to runs opened by `mlflow.start_run`; our stages open theirs with `MlflowClient.create_run`, so
`mlflow_system_metrics` below starts the monitor for a given run id instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import resource
import subprocess
import sys
import time
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB of this process (RUSAGE_SELF) or its largest waited-for child."""
    peak = resource.getrusage(who).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def gpu_utilization_percent(device: torch.device) -> float | None:
    """Utilisation (0-100) of a CUDA device over the driver's last sample period; None when nothing can tell."""
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - a probe: no pynvml (ModuleNotFoundError) or any NVML error means "ask nvidia-smi"
        pass
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--id={index}"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return float(answer.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class StepRecorder:
    """Times iterations and reports throughput and memory per logging window.

    Call `step_started()` / `step_finished(samples)` around each iteration, or use `with recorder.step(samples):`.
    `device` decides whether GPU metrics are reported (CUDA only); `clock` is injectable for tests.
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock
        self._started: float | None = None
        self._last_finished: float | None = None
        self._steps = 0
        self._samples = 0
        self._busy_seconds = 0.0
        self._wait_seconds = 0.0
        self._gaps = 0
        self._gpu_utilization_known = device.type == "cuda"

    def step_started(self) -> None:
        if self._started is not None:
            raise RuntimeError("StepRecorder.step_started: the previous step was not finished")
        self._started = self.clock()
        if self._last_finished is not None:
            self._wait_seconds += self._started - self._last_finished
            self._gaps += 1

    def step_finished(self, samples: int) -> None:
        """End the current step, which processed `samples` samples (frames, scenes: what the loop counts)."""
        if self._started is None:
            raise RuntimeError("StepRecorder.step_finished: step_started was not called")
        if self.device.type == "cuda":
            # Kernels run asynchronously: without this the step would end when its last kernel was queued.
            torch.cuda.synchronize(self.device)
        finished = self.clock()
        self._busy_seconds += finished - self._started
        self._last_finished = finished
        self._started = None
        self._steps += 1
        self._samples += samples

    @contextlib.contextmanager
    def step(self, samples: int) -> Iterator[None]:
        """Time the block as one step of `samples` samples; a block that raises is not counted."""
        self.step_started()
        try:
            yield
        except BaseException:
            self._started = None
            raise
        self.step_finished(samples)

    def metrics(self) -> dict[str, float]:
        """Metrics of the window since the previous call (timing omitted when it had no step), then a new window."""
        metrics: dict[str, float] = {}
        if self._steps:
            metrics["system/iteration_seconds"] = self._busy_seconds / self._steps
            if self._gaps:
                metrics["system/wait_seconds"] = self._wait_seconds / self._gaps
            elapsed = self._busy_seconds + self._wait_seconds
            if elapsed > 0:
                metrics["system/samples_per_second"] = self._samples / elapsed
        metrics["system/host_peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_SELF)
        metrics["system/host_peak_rss_children_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
        if self.device.type == "cuda":
            metrics["system/gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / _MIB
            if self._gpu_utilization_known:
                utilization = gpu_utilization_percent(self.device)
                if utilization is None:
                    log.warning("GPU utilisation unavailable (install nvidia-ml-py or put nvidia-smi on PATH); not logged")
                    self._gpu_utilization_known = False
                else:
                    metrics["system/gpu_utilization_percent"] = utilization
        self._steps = self._samples = self._gaps = 0
        self._busy_seconds = self._wait_seconds = 0.0
        return metrics


@contextlib.contextmanager
def mlflow_system_metrics(run_id: str, tracking_uri: str, sampling_interval_s: float = 10.0) -> Iterator[bool]:
    """Run MLflow's system-metrics monitor for `run_id` while the block runs; yields whether it started.

    Without `psutil` (which MLflow's monitor imports) this logs a warning and records nothing.
    """
    if importlib.util.find_spec("psutil") is None:
        log.warning("MLflow system metrics off: the psutil package is not installed")
        yield False
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval_s, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield True
    finally:
        monitor.finish()
