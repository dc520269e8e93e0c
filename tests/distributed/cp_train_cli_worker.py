"""One rank of the ``powerattn train --cp`` test (spawned by test_train_cli.py): the CLI's
entry function as torchrun would run it (its environment variables set here), first in
float32 (``--cp 2 --stop-at 2``), then with ``--mixed-precision bf16`` in another run
directory on a second port."""

from __future__ import annotations

import os


def main(rank: int, world: int, ports: tuple[int, int], cfg: str, outdir: str) -> None:
    import torch

    torch.set_num_threads(1)
    from powerattn.cli import main as cli

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1"
    )
    common = ["train", "--config", cfg, "--cp", str(world), "--no-progress"]
    os.environ["MASTER_PORT"] = str(ports[0])
    rc = cli([*common, "--out", os.path.join(outdir, "cp"), "--stop-at", "2"])
    assert rc == 0, rc
    os.environ["MASTER_PORT"] = str(ports[1])
    out = os.path.join(outdir, "mp")
    rc = cli([*common, "--out", out, "--stop-at", "2", "--mixed-precision", "bf16"])
    assert rc == 0, rc
