"""External launchers on the CPU (gloo), as subprocesses: two `torchrun --nnodes 2` "nodes" on one machine, sharing a
c10d rendezvous, run `roofline profile --pp 2` as one world (rank 0 writes and prints, the other rank exits 0 without
a word); and a rank that dies mid-run, in processes started the way `srun` starts them (SLURM_PROCID, SLURM_NTASKS,
MASTER_ADDR/MASTER_PORT from the batch script): rank 0 ends with one clear line and exit code 3, no hang, and the
rows it had measured stay saved."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from test_parallel import PROFILE, TINY

from roofline import results

PIPELINE = ["--pp", "2", "--layers", "2", "--microbatches", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def tiny_model(root: Path) -> list[str]:
    path = root / "tiny.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items()))
    return ["--model", str(path)]


def saved_rows(out: Path) -> int:
    try:
        return len(json.loads((out / "results.json").read_text())["rows"])
    except (OSError, ValueError, KeyError):
        return 0


def test_two_torchrun_nodes_run_one_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "pp2"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "roofline-test",
            "-m", "roofline", "profile", *PROFILE, *tiny_model(tmp_path), *PIPELINE,
            "--ops", "qkv_proj,p2p_activation", "--out", str(out)]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [err[-2000:] for _, err in done]
    printed = [stdout for stdout, _ in done if stdout.strip()]
    assert len(printed) == 1 and "Pipeline: PP=2 forward step, 2 microbatches" in " ".join(printed[0].split())
    assert sum("roofline: error" in err for _, err in done) == 0
    res = results.load(out)
    assert (res.run.parallel.ranks, res.run.parallel.pp) == (2, 2) and res.run.parallel.pipeline.step_s
    assert [r.rank for r in res.rows if r.op == "p2p_activation"] == [None, 0, 1]


def test_a_rank_that_dies_ends_the_run_with_one_line_and_keeps_the_rows(tmp_path: Path) -> None:
    out = tmp_path / "dies"
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "MASTER_ADDR": "localhost", "MASTER_PORT": str(free_port()), "SLURM_NTASKS": "2",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_LOCALID": "0", "ROOFLINE_RANK_TIMEOUT_S": "20"}
    cmd = [sys.executable, "-m", "roofline", "profile", *PROFILE, *tiny_model(tmp_path), *PIPELINE,
           "--budget", "0.3", "--out", str(out)]
    ranks = [subprocess.Popen(cmd, env={**env, "SLURM_PROCID": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 180
        while saved_rows(out) < 3:  # the first op merged: its max row and both ranks' rows
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()[1][-2000:]
            time.sleep(0.2)
        ranks[1].kill()  # SIGKILL: the rank dies without a word
        t0 = time.monotonic()
        _, err = ranks[0].communicate(timeout=120)
    finally:
        for p in ranks:
            p.kill()
    lines = [line for line in err.splitlines() if line.startswith("roofline:")]
    assert ranks[0].returncode == 3 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("roofline: error: rank 0 ") and str(out / "results.json") in lines[0]
    assert "lost a peer" in lines[0] or "waited 20 s" in lines[0]
    assert time.monotonic() - t0 < 60  # at most the rank timeout, no hang
    kept = results.load(out)
    assert len(kept.rows) >= 3 and kept.rows[0].status == "ok" and kept.run.parallel.pipeline is None
