"""Run independent jobs (one per scene) in worker processes with one shared progress bar."""

from __future__ import annotations

import multiprocessing
import queue
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Protocol, Sequence, TypeVar

from tqdm import tqdm

Job = TypeVar("Job")


class Progress(Protocol):
    """What a job reports progress through: `put(n)` after finishing n units (frames)."""

    def put(self, count: int) -> None: ...


class _BarProgress:
    def __init__(self, bar: tqdm):
        self.bar = bar

    def put(self, count: int) -> None:
        self.bar.update(count)


def run_jobs(
    work: Callable[[Job, Progress], Any],
    jobs: Sequence[Job],
    workers: int,
    total_units: int,
    description: str,
    on_result: Callable[[Any], None],
) -> None:
    """Call `work(job, progress)` for every job, in-process when workers <= 1, else in a spawn pool.

    `work` must be a module-level function (it is pickled). Spawned workers, not forked ones: boto3 and
    torch keep threads that a fork would copy in a broken state. Results reach `on_result` in the parent
    as jobs finish; the first failing job's exception is raised after cancelling the rest.
    """
    with tqdm(total=total_units, desc=description, unit="frame", dynamic_ncols=True) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                on_result(work(job, _BarProgress(bar)))
            return
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            ticks = manager.Queue()
            pending = {pool.submit(work, job, ticks) for job in jobs}
            try:
                while pending:
                    try:
                        bar.update(ticks.get(timeout=0.2))
                    except queue.Empty:
                        pass
                    for future in [f for f in pending if f.done()]:
                        pending.remove(future)
                        on_result(future.result())
            finally:
                for future in pending:
                    future.cancel()
            while not ticks.empty():
                bar.update(ticks.get())
