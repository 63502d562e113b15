"""Ridge sums all-reduced over 2 CPU processes (gloo) fit the same readout as one process on
all the data."""

import os
import socket
import subprocess
import sys
import textwrap

import torch

from carousel.esn import EchoStateNetwork

WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from carousel.esn import EchoStateNetwork

    rank, out = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200, 4, 1, generator=g, dtype=torch.float64)
    y = torch.roll(u, -1, 0) ** 2
    shard = slice(2 * rank, 2 * rank + 2)  # each process holds 2 of the 4 sequences
    esn = EchoStateNetwork(30, leak_rate=0.5, ridge=1e-4, seed=1)
    esn.fit(u[:, shard], y[:, shard], washout=20, distributed=True)
    torch.save({"weight": esn.readout.weight, "bias": esn.readout.bias}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_fit_the_single_process_readout(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200, 4, 1, generator=g, dtype=torch.float64)
    y = torch.roll(u, -1, 0) ** 2
    whole = EchoStateNetwork(30, leak_rate=0.5, ridge=1e-4, seed=1).fit(u, y, washout=20)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["weight"], whole.readout.weight)
        torch.testing.assert_close(got["bias"], whole.readout.bias)
