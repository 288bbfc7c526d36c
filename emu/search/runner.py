"""Running independent tasks on a local process pool or a Ray cluster, results into a store.

A ``Task`` is a key, the name of a task function (``emu.search.tasks.TASK_FUNCTIONS``:
search, invariant, differential, inject) and a JSON payload; ``execute(task)`` runs one
anywhere (a pool worker, a Ray worker on another machine) and returns its result as plain
data: the deterministic ``result``, and ``seconds``, ``ops`` and ``worker`` beside it.
``run_tasks`` skips the tasks the store has already finished, runs the rest and stores each
result the moment it arrives.

- Local (default): ``concurrent.futures.ProcessPoolExecutor`` with one worker per core
  (``workers``). If a worker dies (killed, out of memory), the pool is rebuilt and the
  unfinished tasks resubmitted, at most ``max_restarts`` times. Workers are spawned (they
  share nothing with the parent), so a script that calls ``run_tasks`` needs the usual
  ``if __name__ == "__main__":`` guard; ``python -m ...`` entry points do not.
- Ray (``ray_address``: an address, ``auto`` for the cluster this machine belongs to, or
  ``local`` to start one here with ``workers`` CPUs; an already initialised Ray is used as it
  is): the same ``execute`` as a Ray task; Ray schedules, retries tasks whose worker died
  (``max_retries``) and moves the results. Ray is optional (``pip install heapemu[ray]``).

Nothing here schedules: the pool or Ray does.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from emu.search.store import ResultStore
from emu.search.tasks import TASK_FUNCTIONS


@dataclass(frozen=True)
class Task:
    key: str  # unique in its run: "invariant/wine/x64/seed3"
    fn: str  # a name in TASK_FUNCTIONS
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "fn": self.fn, "payload": self.payload}


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Run one task (a ``Task.to_json()``) in this process: ``{key, status, result, seconds,
    ops, worker}``. A task that raises is an ``error`` result with its traceback, not a lost
    task."""
    t0 = time.perf_counter()
    try:
        status, result, ops = TASK_FUNCTIONS[task["fn"]](task["payload"])
    except Exception as e:  # a task's own failure is a result to look at, not a crash
        status, ops = "error", 0
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return {
        "key": task["key"],
        "status": status,
        "result": result,
        "seconds": time.perf_counter() - t0,
        "ops": ops,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


@dataclass
class RunSummary:
    total: int  # tasks in the run
    skipped: int  # already in the store
    finished: int = 0  # finished by this run
    lost: int = 0  # not finished (a worker kept dying, Ray gave up): rerun to finish them
    restarts: int = 0  # local pool rebuilds after a worker died
    seconds: float = 0.0
    ops: int = 0
    task_seconds: float = 0.0  # sum of the tasks' own times
    engine: str = "local"
    workers: int = 1
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.skipped + self.finished == self.total


class _Progress:
    """A progress bar with the rate and ETA on stderr (a line every ``every`` seconds when
    stderr is not a terminal); ``quiet`` turns it off."""

    def __init__(self, total: int, done: int, label: str, quiet: bool, unit: str):
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self.total, self.done, self.label, self.unit = total, done, label, unit
        self.t0 = time.perf_counter()
        self.ops = 0
        self.count = 0
        self.last_line = self.t0
        self.bar: Progress | None = None
        if self.live:
            self.bar = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task(label, total=total, completed=done, rate="")
            self.bar.start()

    def rate(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        text = f"{self.count / dt:.2f} tasks/s"
        if self.ops:
            text += f", {self.ops / dt:,.0f} {self.unit}/s"
        return text

    def advance(self, ops: int) -> None:
        self.count += 1
        self.ops += ops
        if self.bar is not None:
            self.bar.update(self.task, advance=1, rate=self.rate())
        elif not self.quiet:
            now = time.perf_counter()
            if now - self.last_line >= 10 or self.done + self.count == self.total:
                self.last_line = now
                left = self.total - self.done - self.count
                eta = left * (now - self.t0) / self.count
                print(
                    f"{self.label}: {self.done + self.count}/{self.total} tasks, {self.rate()}, "
                    f"ETA {eta:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_tasks(
    tasks: Sequence[Task],
    store: ResultStore,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    quiet: bool = False,
    label: str = "tasks",
    unit: str = "ops",
    max_restarts: int = 3,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Run the tasks the store has not finished; see the module doc."""
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    done = store.done()
    todo = [t for t in tasks if t.key not in done]
    workers = workers or os.cpu_count() or 1
    summary = RunSummary(total=len(tasks), skipped=len(tasks) - len(todo), workers=workers)
    progress = _Progress(len(tasks), summary.skipped, label, quiet, unit)
    by_key = {t.key: t for t in todo}
    t0 = time.perf_counter()

    def finished(out: dict[str, Any]) -> None:
        task = by_key[out["key"]]
        store.add(
            task.key,
            task.to_json(),
            out["status"],
            out["result"],
            out["seconds"],
            out["ops"],
            out["worker"],
        )
        summary.finished += 1
        summary.ops += out["ops"]
        summary.task_seconds += out["seconds"]
        summary.statuses[out["status"]] = summary.statuses.get(out["status"], 0) + 1
        progress.advance(out["ops"])
        if on_result:
            on_result(out)

    try:
        if not todo:
            pass
        elif ray_address is not None:
            summary.engine = "ray"
            summary.workers = _run_ray(todo, ray_address, workers, finished)
        elif workers == 0:
            summary.engine = "inline"
            for task in todo:
                finished(execute(task.to_json()))
        else:
            summary.restarts = _run_local(todo, workers, finished, max_restarts)
    finally:
        progress.close()
        summary.seconds = time.perf_counter() - t0
        summary.lost = len(tasks) - summary.skipped - summary.finished
    return summary


def _run_local(
    todo: Sequence[Task],
    workers: int,
    finished: Callable[[dict[str, Any]], None],
    max_restarts: int,
) -> int:
    """The local pool; returns how many times it was rebuilt after a worker died."""
    left = {t.key: t for t in todo}
    restarts = 0
    # spawn: workers start clean (no copy of the parent's threads or emulator state)
    context = multiprocessing.get_context("spawn")
    while left:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(execute, t.to_json()): k for k, t in left.items()}
            try:
                for fut in cf.as_completed(futures):
                    out = fut.result()
                    left.pop(out["key"], None)
                    finished(out)
            except BrokenProcessPool:
                # a worker died: what finished is stored; the rest runs again in a new pool
                for fut, key in futures.items():
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        out = fut.result()
                        if key in left:
                            left.pop(key)
                            finished(out)
                restarts += 1
                if restarts > max_restarts:
                    print(
                        f"heapemu: workers died {restarts} times; {len(left)} tasks not run "
                        "(rerun the same command to finish them)",
                        file=sys.stderr,
                    )
                    return restarts
                print(
                    f"heapemu: a worker died; restarting the pool for the {len(left)} tasks left",
                    file=sys.stderr,
                )
    return restarts


def _run_ray(
    todo: Sequence[Task],
    address: str,
    workers: int,
    finished: Callable[[dict[str, Any]], None],
) -> int:
    """Ray: every task a ``ray.remote`` call of ``execute``; returns the cluster's CPUs."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "--ray needs Ray: pip install 'heapemu[ray]' (or pip install ray)"
        ) from None
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(max_retries=3, retry_exceptions=False)(execute)
        pending = {remote.remote(t.to_json()): t.key for t in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries exhausted: not stored, rerun
                    print(f"heapemu: task {key} lost: {type(e).__name__}", file=sys.stderr)
                    continue
                finished(out)
        return int(ray.cluster_resources().get("CPU", workers))
    finally:
        if started:
            ray.shutdown()
