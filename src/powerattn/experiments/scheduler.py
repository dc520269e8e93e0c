"""Run independent jobs (Python functions) in parallel processes, each logging to its own file.

Each job is ``fn(*args)`` with ``fn`` a module-level function (it is pickled by reference into
a fresh interpreter: the ``spawn`` start method, so that CUDA, threads and compiled kernels of
the parent never leak into a child). A job's stdout and stderr -- Python's and the C
libraries' -- go to its log file; its exit status is 0 when ``fn`` returns, the code of a
``SystemExit`` it raises, 1 for any other exception (the traceback is in the log), minus the
signal number when it is killed. Several jobs may share one GPU (the default); with
``gpus``, job ``i`` sees only ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CONTEXT = mp.get_context("spawn")


@dataclass
class Job:
    """``fn(*args)`` in its own process, logging to ``log``; ``label`` is printed with it."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    log: Path | None = None
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # the caller's, e.g. for a retry


def _child(fn: Callable[..., Any], args: tuple, log: str | None) -> None:
    """The child's entry point: send fds 1 and 2 to ``log``, then run the job."""
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)  # lines reach the log as they are printed
    fn(*args)


def _spawn(job: Job, gpu: str | None) -> Any:
    """Start ``job``'s process (its environment gets ``CUDA_VISIBLE_DEVICES=gpu`` if given)."""
    proc = _CONTEXT.Process(
        target=_child, args=(job.fn, job.args, None if job.log is None else str(job.log)),
        name=job.name,
    )  # fmt: skip
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        if gpu is not None:  # the child inherits the environment at start()
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        proc.start()
    finally:
        if gpu is not None:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return proc


def run_jobs(
    jobs: Sequence[Job],
    parallel: int,
    gpus: Sequence[str] = (),
    on_start: Callable[[Job], None] | None = None,
    on_exit: Callable[[Job, int], Job | None] | None = None,
    log: Callable[[str], object] = lambda msg: print(msg, flush=True),
) -> dict[str, int]:
    """Run ``jobs`` in order, ``parallel`` at a time; returns each job name's last exit
    status. ``on_start(job)`` runs in this process just before a job starts (e.g. to make
    its log's folder); ``on_exit(job, status)`` may return a job to queue (e.g. a retry);
    ``gpus``: place jobs round robin on these devices (more than one), else all share what
    they see."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    pending = list(jobs)
    active: dict[Any, Job] = {}
    status: dict[str, int] = {}
    started = 0
    while pending or active:
        while pending and len(active) < parallel:
            job = pending.pop(0)
            gpu = gpus[started % len(gpus)] if len(gpus) > 1 else None
            started += 1
            if on_start is not None:
                on_start(job)
            active[_spawn(job, gpu)] = job
            about = ", ".join(x for x in (job.label, gpu and f"GPU {gpu}") if x)
            log(f"== started {job.name}" + (f" ({about})" if about else ""))
        sentinels = {proc.sentinel: proc for proc in active}
        for ready in multiprocessing.connection.wait(list(sentinels)):
            proc = sentinels[ready]
            proc.join()
            job = active.pop(proc)
            code = proc.exitcode
            status[job.name] = code
            log(f"== finished {job.name} (exit {code})")
            again = on_exit(job, code) if on_exit is not None else None
            if again is not None:
                pending.append(again)
    return status
