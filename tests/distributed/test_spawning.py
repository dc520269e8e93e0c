"""The spawn helper of the gloo tests reports a failing rank (its fast exit only follows a
rank that finished)."""

from __future__ import annotations

import pytest
from spawning import spawn


def fail_on_rank_one(rank: int) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")


def test_a_failing_rank_fails_the_test():
    with pytest.raises(Exception, match="rank 1 fails on purpose"):
        spawn(fail_on_rank_one, 2, ())
