"""The process scheduler of ``--jobs`` (powerattn.experiments.scheduler): Python functions in
spawned processes, one log per job with Python's and the C level's output, exit statuses
(return, SystemExit, exception, signal), retries, several jobs at once."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from powerattn.experiments.scheduler import Job, run_jobs


def _ok(text: str) -> None:
    print(text)
    os.write(1, b"from C\n")  # what a C library writes to fd 1 lands in the log too


def _raises() -> None:
    raise RuntimeError("kernel fault")


def _exits(code: int) -> None:
    print("refused", file=sys.stderr)
    raise SystemExit(code)


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _sleeps(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{time.time()} start\n")
    time.sleep(1.5)
    with open(path, "a") as f:
        f.write(f"{time.time()} end\n")


def test_statuses_logs_and_retry(tmp_path):
    jobs = [
        Job("ok", _ok, ("hello",), log=tmp_path / "ok.txt", label="first"),
        Job("raises", _raises, log=tmp_path / "raises.txt"),
        Job("exits", _exits, (3,), log=tmp_path / "exits.txt"),
        Job("killed", _killed, log=tmp_path / "killed.txt"),
    ]
    seen, logged = [], []

    def on_exit(job, code):
        seen.append((job.name, code))
        if job.name == "raises":  # retried once, as something that works
            return Job("raises-retry", _ok, ("again",), log=tmp_path / "retry.txt")
        return None

    status = run_jobs(jobs, 2, on_start=lambda j: logged.append(f"start {j.name}"),
                      on_exit=on_exit, log=logged.append)  # fmt: skip
    assert status == {"ok": 0, "raises": 1, "exits": 3, "killed": -signal.SIGKILL,
                      "raises-retry": 0}  # fmt: skip
    assert sorted(seen) == sorted(status.items())
    assert (tmp_path / "ok.txt").read_text() == "hello\nfrom C\n"
    assert "RuntimeError: kernel fault" in (tmp_path / "raises.txt").read_text()
    assert (tmp_path / "exits.txt").read_text() == "refused\n"
    assert (tmp_path / "retry.txt").read_text() == "again\nfrom C\n"
    assert "== started ok (first)" in logged and "== finished exits (exit 3)" in logged
    assert logged.index("start ok") < logged.index("== started ok (first)")


def test_jobs_run_at_once_up_to_the_limit(tmp_path):
    stamps = [tmp_path / f"{i}.txt" for i in range(3)]
    jobs = [Job(f"j{i}", _sleeps, (str(p),)) for i, p in enumerate(stamps)]
    assert run_jobs(jobs, 2, log=lambda m: None) == {"j0": 0, "j1": 0, "j2": 0}
    spans = [[float(x.split()[0]) for x in p.read_text().splitlines()] for p in stamps]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # j0 and j1 overlap
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # j2 waits for a free slot
    with pytest.raises(ValueError, match="parallel"):
        run_jobs(jobs, 0)
