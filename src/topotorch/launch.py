"""Where the runs of a sweep or a reproduction execute: one after another here, in worker processes on this
machine (``--jobs N``), or as jobs on a cluster through submitit (``--launcher slurm``).

Every run writes its own resumable run directory (``metrics.json`` when finished, checkpoints while running), and
the coordinating process only collects the metrics: after an interruption the same command reads the finished
runs and submits the rest, resuming those that had checkpoints. A worker or a job runs exactly the run a serial
loop would (the recipe's config pins its thread count), so the results are the same.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .config import ConfigError

__all__ = ["LAUNCHERS", "Runs", "run_cell", "run_batch", "parse_slurm"]

# pool: worker processes here (spawned); slurm: one submitit job per run on a Slurm cluster; submitit-local:
# submitit's local executor, the same submission and collection path as slurm on this machine (what the tests run)
LAUNCHERS = ("pool", "slurm", "submitit-local")


def run_cell(recipe: str, d: str, over: dict, resume: bool, progress: bool = False) -> dict:
    """One run, in whatever process executes it: its metrics (``run_recipe`` into ``d``)."""
    from .recipes import run_recipe
    return run_recipe(recipe, Path(d), over, resume=resume, progress=progress)


def run_batch(recipe: str, dirs: list[str], overs: list[dict], root: str, resume: bool, progress: bool = False) -> list[dict]:
    """Seeds of one config as one batched program of replicas (``recipes.run_seeds``): each run's metrics."""
    from .recipes import run_seeds
    ms, _ = run_seeds(recipe, [Path(d) for d in dirs], overs, Path(root), resume=resume, progress=progress)
    return ms


class Runs:
    """Runs submitted by key and collected by key, in any order: here, in a pool of worker processes, or as
    submitit jobs.

    ``pool`` keeps the machine's threads within its cores: a run needing ``threads`` threads (its recipe's
    ``threads``) starts only when the running ones leave that many cores free (or nothing runs), with at most
    ``jobs`` runs at once; later, smaller runs may start first. Cluster launchers submit every run at once and
    let the scheduler decide (``jobs`` caps the concurrent array tasks on Slurm).

    Args:
        jobs: worker processes / concurrent jobs (``pool`` with 1: every run in this process, when collected).
        launcher: one of :data:`LAUNCHERS`.
        folder: where submitit keeps each job's logs and pickles (``slurm`` / ``submitit-local``).
        slurm: extra submitit parameters, e.g. ``{"slurm_partition": "gpu", "timeout_min": 120}``;
            ``timeout_min`` defaults to 60 and ``cpus_per_task`` to the run's threads.
    """

    def __init__(self, jobs: int = 1, launcher: str = "pool", folder=None, slurm: dict | None = None):
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise ConfigError(f"--jobs must be an integer ≥ 1, got {jobs!r}")
        if launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher {launcher!r}; choose from {', '.join(LAUNCHERS)}")
        if slurm and launcher == "pool":
            raise ConfigError("--slurm settings apply to a cluster launcher (--launcher slurm)")
        self.jobs, self.launcher, self.slurm = jobs, launcher, dict(slurm or {})
        self.cores = os.cpu_count() or 1
        self.waiting: dict = {}   # key → (threads, fn, args), not started
        self.running: dict = {}   # key → (threads, future)
        self.collected = 0
        self.pool = None
        if launcher == "pool" and jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
        elif launcher != "pool":
            try:
                import submitit
            except ImportError as e:
                raise ImportError(f"--launcher {launcher} needs submitit: pip install 'topotorch[cluster]'") from e
            if folder is None:
                raise ConfigError(f"--launcher {launcher} needs a folder for the job logs")
            self.submitit = submitit.AutoExecutor(folder=str(folder), cluster="slurm" if launcher == "slurm" else "local")

    @property
    def serial(self) -> bool:
        """Whether runs execute in this process (progress bars make sense)."""
        return self.pool is None and self.launcher == "pool"

    def add(self, key, threads: int, fn, *args) -> None:
        """Queue ``fn(*args)`` (a module-level function: it is pickled) under ``key``."""
        if key in self.waiting or key in self.running:
            raise ValueError(f"run {key!r} was added twice")
        if self.launcher != "pool":
            params = {"timeout_min": 60, "cpus_per_task": threads, **self.slurm}
            if self.launcher == "slurm":
                params.setdefault("slurm_array_parallelism", self.jobs)
            try:
                self.submitit.update_parameters(**params)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"submitit refused the launcher settings {params}: {e}") from e
            self.running[key] = (threads, self.submitit.submit(fn, *args))
            return
        self.waiting[key] = (threads, fn, args)
        self._fill()

    def _busy(self) -> tuple[int, int]:
        """(runs in progress, their threads)."""
        live = [t for t, f in self.running.values() if not f.done()]
        return len(live), sum(live)

    def _fill(self) -> None:
        if self.pool is None:
            return
        for key in list(self.waiting):
            count, busy = self._busy()
            threads = self.waiting[key][0]
            if count >= self.jobs:
                return
            if count and busy + threads > self.cores:
                continue
            _, fn, args = self.waiting.pop(key)
            self.running[key] = (threads, self.pool.submit(fn, *args))

    def finished(self) -> int:
        """Runs finished so far: collected, or done and waiting to be collected."""
        return self.collected + sum(f.done() for _, f in self.running.values())

    def result(self, key, tick=None, every: float = 60.0):
        """The result of run ``key``, waiting for it (or, without workers, running it now); the pool is kept fed
        meanwhile. A run's exception is raised here. ``tick()`` is called every ``every`` seconds of waiting (a
        sign of life while a long run holds the collection back)."""
        out = self._result(key, tick, every)
        self.collected += 1
        return out

    def _result(self, key, tick, every):
        if key in self.waiting and self.pool is None:
            _, fn, args = self.waiting.pop(key)
            return fn(*args)
        if key not in self.waiting and key not in self.running:
            raise KeyError(f"no run {key!r}")
        from concurrent.futures import FIRST_COMPLETED, wait
        last = time.time()
        while key not in self.running or not self.running[key][1].done():
            live = [f for _, f in self.running.values() if not f.done()]
            if self.launcher != "pool":
                return self.running.pop(key)[1].result()  # a submitit job: the scheduler runs it
            if not live:  # nothing started can free a slot: start this one (it fits an empty machine)
                self._fill()
                continue
            wait(live, timeout=max(0.0, every - (time.time() - last)) if tick else None, return_when=FIRST_COMPLETED)
            self._fill()
            if tick is not None and time.time() - last >= every:
                tick()
                last = time.time()
        return self.running.pop(key)[1].result()

    def close(self) -> None:
        """Stop the worker processes (runs not yet collected are cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def parse_slurm(items: list[str]) -> dict:
    """``["slurm_partition=gpu", "timeout_min=120"]`` → a dict (numbers as numbers)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--slurm takes KEY=VALUE (a submitit parameter), got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            out[k.strip()] = v.strip()
    return out
