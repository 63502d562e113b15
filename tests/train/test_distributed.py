"""Data-parallel training: two processes (torchrun, gloo on CPU) make the same updates as one
process on the combined batch."""

import os
import subprocess
import sys

import torch

from carousel.train import load_checkpoint, read_metrics, train

DDP = [
    "train.dtype=float64",
    "train.batch_size=8",
    "model.cell=lstm",
    "model.hidden_size=6",
    "optim.name=sgd",
    "optim.lr=0.5",
    "optim.momentum=0.9",
    "train.clip_norm=1.0",
]


def test_two_processes_equal_one_process_on_the_combined_batch_and_resume(
    make_config, fast_overrides, tmp_path
):
    single = train(make_config(*DDP, "train.steps=4", run="single"))
    # the data-parallel run resumes a single-process checkpoint at step 2 and trains 2 more
    train(make_config(*DDP, "train.steps=2", run="ddp"))
    sets = [
        f"--set={o}"
        for o in [*fast_overrides, *DDP, "train.steps=4", f"log.dir={tmp_path / 'ddp'}"]
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "carousel",
        "train",
        "binary-addition",
        "--quiet",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("binary-addition: 4 steps") == 1  # only rank 0 reports
    a = load_checkpoint(single.checkpoint)
    b = load_checkpoint(tmp_path / "ddp" / "last")
    assert b.step == 4 and b.meta["trainer"]["world_size"] == 2
    for k in a.model:
        torch.testing.assert_close(b.model[k], a.model[k], rtol=1e-10, atol=1e-12)
    steps = [r["step"] for r in read_metrics(tmp_path / "ddp") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # one writer
    losses = [r["loss"] for r in read_metrics(single.run_dir) if r["kind"] == "train"]
    ddp_losses = [r["loss"] for r in read_metrics(tmp_path / "ddp") if r["kind"] == "train"]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(losses), rtol=1e-10, atol=0)
