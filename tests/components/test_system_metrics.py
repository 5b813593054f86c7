"""Step timing, throughput and memory metrics with a fake clock."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest
import torch

from bifusion.components.system_metrics import StepRecorder, mlflow_system_metrics, peak_rss_mb


def fake_clock(*times: float):
    ticks: Iterator[float] = iter(times)
    return lambda: next(ticks)


def test_window_averages_step_time_gaps_and_throughput() -> None:
    # Steps [0, 2] and [3, 7] (8 samples each): busy 6 s, one 1 s gap, 16 samples in 7 s.
    recorder = StepRecorder(torch.device("cpu"), clock=fake_clock(0.0, 2.0, 3.0, 7.0, 10.0, 11.0))
    recorder.step_started()
    recorder.step_finished(8)
    with recorder.step(8):
        pass
    metrics = recorder.metrics()
    assert metrics["system/iteration_seconds"] == pytest.approx(3.0)
    assert metrics["system/wait_seconds"] == pytest.approx(1.0)
    assert metrics["system/samples_per_second"] == pytest.approx(16 / 7)
    # The next window starts fresh; the 3 s gap across the window boundary belongs to it.
    with recorder.step(4):
        pass
    metrics = recorder.metrics()
    assert metrics["system/iteration_seconds"] == pytest.approx(1.0)
    assert metrics["system/wait_seconds"] == pytest.approx(3.0)
    assert metrics["system/samples_per_second"] == pytest.approx(4 / 4)


def test_memory_is_reported_and_gpu_metrics_only_on_cuda() -> None:
    recorder = StepRecorder(torch.device("cpu"), clock=fake_clock(0.0, 1.0))
    with recorder.step(1):
        pass
    metrics = recorder.metrics()
    assert metrics["system/host_peak_rss_mb"] == pytest.approx(peak_rss_mb(), rel=0.5)
    assert 10 < metrics["system/host_peak_rss_mb"] < 1e6  # a Python process with torch: tens of MiB at least
    assert not any(key.startswith("system/gpu") for key in metrics)
    # A window without steps has only the memory peaks.
    assert set(recorder.metrics()) == {"system/host_peak_rss_mb", "system/host_peak_rss_children_mb"}


def test_a_failed_step_is_not_counted_and_misuse_is_an_error() -> None:
    recorder = StepRecorder(torch.device("cpu"), clock=fake_clock(0.0, 5.0, 6.0))
    with pytest.raises(ValueError):
        with recorder.step(3):
            raise ValueError("out of memory")
    with recorder.step(2):
        pass
    metrics = recorder.metrics()
    assert metrics["system/iteration_seconds"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="step_started was not called"):
        recorder.step_finished(1)
    recorder = StepRecorder(torch.device("cpu"), clock=fake_clock(0.0, 1.0))
    recorder.step_started()
    with pytest.raises(RuntimeError, match="not finished"):
        recorder.step_started()


def test_mlflow_system_metrics_without_psutil_is_a_logged_no_op(monkeypatch, caplog) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psutil" else real_find_spec(name, *a))
    with caplog.at_level(logging.WARNING), mlflow_system_metrics("run-id", "sqlite:///unused.db") as started:
        assert started is False
    assert "psutil" in caplog.text
