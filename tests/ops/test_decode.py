"""The Triton decode kernel against the float64 reference (cases in decode_cases.py).

On CUDA the cases run in-process. On the CPU they run in Triton's interpreter, in a
subprocess, because ``TRITON_INTERPRET=1`` must be set before triton is imported and must
not leak into the other tests of this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import decode_cases
import pytest
import torch

CASES = Path(__file__).with_name("decode_cases.py")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU: interpreter test)")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernels"])
@pytest.mark.parametrize("case", decode_cases.cases(), ids=lambda c: "-".join(map(str, c)))
def test_decode_kernel_cuda(case, fused):
    msg = decode_cases.check(*case, device="cuda", fused=fused)
    assert msg is None, msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA runs the cases in-process")
def test_decode_kernel_interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(CASES), "cpu"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "decode cases passed" in proc.stdout
