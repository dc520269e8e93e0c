"""Spawning gloo ranks from a test: a free port, and processes killed after a timeout, so
that a hang fails the test instead of blocking CI."""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """A spawned rank's start: one CPU thread (the ranks share the cores) and a gloo group on
    ``port`` whose collectives time out after 60 s instead of hanging."""
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )


def _run_and_exit(rank: int, fn, *args) -> None:
    """``fn(rank, *args)``, then leave at once: a finished rank skips the interpreter's and
    C++'s teardown, where gloo's threads can abort the process ("terminate called without an
    active exception", seen once in a full CPU suite) after every result was written. An
    exception still propagates (the spawn wrapper reports it and exits non-zero)."""
    fn(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn, world: int, args: tuple, timeout_s: float = TIMEOUT_S) -> None:
    """``fn(rank, *args)`` in ``world`` spawned processes; an error in one is raised here,
    and after ``timeout_s`` every process still alive is killed and the test fails."""
    ctx = mp.start_processes(
        _run_and_exit, args=(fn, *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{world} processes did not finish in {timeout_s} s (a hang?)")
