"""Process groups of a run over tp · dp · pp ranks, laid out as Megatron lays them out: TP fastest, then DP, then PP.

    rank = t + tp · (d + dp · p)      (TP rank t, DP replica d, pipeline stage p)

So a TP group is tp consecutive ranks: one node's GPUs under `torchrun --nproc-per-node tp`, where its all-reduces
ride NVLink; DP and PP groups stride across TP groups, and across nodes when there are several. Every collective
runs on its own axis's group (ops/comm.py reads them through `comm.axis`).
"""

from __future__ import annotations

import os

import torch.distributed as dist

from roofline.ops.comm import Axis, set_axes

AXES = ("tp", "dp", "pp")


def coordinates(rank: int, tp: int, dp: int, pp: int) -> dict[str, int]:
    """{"tp": t, "dp": d, "pp": p} of a global rank."""
    return {"tp": rank % tp, "dp": rank // tp % dp, "pp": rank // (tp * dp)}


def global_rank(at: dict[str, int], tp: int, dp: int) -> int:
    """The rank at coordinates {"tp": t, "dp": d, "pp": p}."""
    return at["tp"] + tp * (at["dp"] + dp * at["pp"])


def groups_of(name: str, tp: int, dp: int, pp: int) -> list[tuple[int, ...]]:
    """Every group of axis `name`, each in the axis's order (a PP group: stage 0 first), in a fixed order: what
    every rank must create, group by group, the same way (torch.distributed.new_group)."""
    sizes = {"tp": tp, "dp": dp, "pp": pp}
    out = []
    for rank in range(tp * dp * pp):
        at = coordinates(rank, tp, dp, pp)
        if at[name] == 0:
            out.append(tuple(global_rank({**at, name: k}, tp, dp) for k in range(sizes[name])))
    return out


def make_axes(tp: int, dp: int, pp: int) -> dict[str, Axis]:
    """In every rank: create the TP, DP and PP groups and hand this rank's to ops/comm.py. An axis of one rank gets no
    group (nothing communicates on it); one that spans the world uses the world's."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != tp * dp * pp:
        raise ValueError(f"{world} ranks cannot be laid out as tp {tp} × dp {dp} × pp {pp}")
    axes = {}
    for name in AXES:
        groups = groups_of(name, tp, dp, pp)
        mine = next(g for g in groups if rank in g)
        group = None
        if 1 < len(mine) < world:
            for ranks in groups:  # every rank creates every group, in the same order
                made = dist.new_group(list(ranks))
                group = made if ranks == mine else group
        axes[name] = Axis(group, mine)
    set_axes(axes)
    return axes


def one_node(ranks: tuple[int, ...]) -> bool:
    """Whether these ranks share a node: launchers number a node's ranks consecutively, LOCAL_WORLD_SIZE per node
    (a run whose ranks the tool started itself is one node)."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    return len({r // per_node for r in ranks}) == 1
