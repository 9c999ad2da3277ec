"""Collectives of a parallel block: the all-reduces after the row-parallel projections (TP), the gradients'
all-reduce (DP), the activation's send/recv between pipeline stages (PP), and the all-gather and reduce-scatter
that measure the interconnect (`interconnect.calibrate_interconnect`).

Under Megatron tensor parallelism over n ranks (BlockConfig.tp = n, see BlockConfig.shard) each rank ends the
output projection and FFN-down with a partial [tokens, d_model] sum; an all-reduce adds the n partials, and
every rank gets the full result. These ops apply only when tp > 1: `roofline profile --tp N` measures them
and `roofline ops --tp N` lists them.

Conventions, those of NCCL-tests ("bus bandwidth"), for a buffer of M elements (S = M·out_bytes bytes) over n ranks:
- min_bytes is the bus bytes, what each rank must send (and receive) over its links with the optimal
  algorithm: all-reduce 2·(n−1)/n·S (a reduce-scatter, then an all-gather); all-gather (S = the gathered
  output) and reduce-scatter (S = the whole input) (n−1)/n·S. So min_bytes / time is NCCL-tests' busbw
  = algbw·2(n−1)/n (all-reduce) or algbw·(n−1)/n, which does not depend on n for an ideal ring: it compares
  with the link bandwidth, and it is the roof these ops meet ("comm.busbw", analysis/placement.ceiling_key).
- FLOPs are the reduction adds a rank performs: it reduces its 1/n of the elements from n−1 peers, so
  (n−1)/n·M for all-reduce and reduce-scatter, 0 for all-gather. Their intensity (≤ 1/(2·bytes)) puts them far
  left of any ridge: they are interconnect-bound.
- Check: the ranks' inputs are the shared random `base` scaled by rank + 1, so every rank can compute the
  expected float64 sum (or gathered rows) and checks that it got it.
- The element type is the projection's output type (bf16 under fp8, which writes bf16). The all-reduce works in
  place, as Megatron's does: timing calls keep reducing the same buffer (its values grow ×n per call,
  harmless for the time; the check reads the first call).
- Train mode (`--mode train`): each TP all-reduce row is the step's pair, the forward's all-reduce of the
  partial outputs and the backward's of the input gradient at the column-parallel layer that starts the
  sub-layer (Megatron's conjugate f and g), the same [T, d_model] size. Under data parallelism
  (`profile --dp N`) the ranks hold whole replicas and one more collective runs: the all-reduce of the block's
  weight gradients (DDP's, here one bucket, not overlapped with the backward as DDP would), in the run's dtype.
- Process groups: each collective runs on its own axis's group (`Axis`, set by measure/groups.py: TP, DP, PP;
  Megatron's layout, TP fastest), and meets that group's roof: a TP all-reduce "comm.busbw", the gradients'
  all-reduce "comm.busbw.dp", the stage boundary's send/recv "comm.p2p" (analysis/placement.Roofs).
- Pipeline parallelism (`profile --pp N`): at a stage boundary one microbatch's activation [T, d_model] goes to
  the next stage (and in train mode its gradient comes back), point to point: min_bytes = T·d·out_bytes per
  direction, what one link carries, no FLOPs. Every stage posts its send and its receive together (stage 0
  only sends, the last only receives); the row is the slowest stage's. Check: stage s sends base·(s + 1) and
  must receive base·s (its gradient: −base·(s + 2)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from roofline.config import BlockConfig
from roofline.ops.base import TORCH_DTYPES, Formula, Inputs, Op, Variant, relative_error, take_rows
from roofline.ops.linear import FP8_OUT_DTYPE, out_bytes

# torch ≥ 2.11 renamed the tensor collectives (the old names warn).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class Axis:
    """The ranks a collective of one axis (tp, dp, pp) spans from this rank: its process group (None: the world)
    and their global ranks in group order (a pipeline's stages, first to last)."""

    group: dist.ProcessGroup | None
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def position(self) -> int:
        """This rank's index in the group: its TP rank, DP replica or pipeline stage."""
        return self.ranks.index(dist.get_rank()) if dist.is_initialized() else 0

    def neighbour(self, step: int) -> int | None:
        """The global rank `step` places along the axis (the next stage: +1), None past either end."""
        k = self.position + step
        return self.ranks[k] if 0 <= k < self.size else None


_AXES: dict[str, Axis] = {}


def axis(name: str) -> Axis:
    """This rank's group of axis `name` ("tp", "dp", "pp"), as measure/groups.py set it; the world otherwise."""
    if name in _AXES:
        return _AXES[name]
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Axis(None, tuple(range(world)))


def set_axes(axes: dict[str, Axis]) -> None:
    """The process groups of this rank's axes (measure/groups.py); {} goes back to the world for every axis."""
    _AXES.clear()
    _AXES.update(axes)


@contextlib.contextmanager
def axes_bound(**axes: Axis) -> Iterator[None]:
    """Run an axis's collectives on another group for a while (the DP group's all-reduce roof measured with the
    all-reduce op of the TP axis)."""
    saved = dict(_AXES)
    _AXES.update(axes)
    try:
        yield
    finally:
        set_axes(saved)


FLAGS = {"tp": "--tp", "dp": "--dp", "pp": "--pp"}


@dataclass(frozen=True)
class Buffer:
    """The [rows, d_model] tensor a collective moves, the ranks it spans and the axis whose group they are."""

    rows: Callable[[BlockConfig], int]
    ranks: Callable[[BlockConfig], int]
    axis: str = "tp"

    def elements(self, c: BlockConfig) -> int:
        return self.rows(c) * c.d_model

    def needs_ranks(self, c: BlockConfig, device: torch.device) -> str | None:
        """A collective needs its axis's process group, of exactly the ranks the config says."""
        if dist.is_initialized() and axis(self.axis).size == self.ranks(c):
            return None
        n = self.ranks(c)
        return f"needs {n} ranks in a process group (roofline profile {FLAGS[self.axis]} {n})"

    def position(self) -> int:
        return axis(self.axis).position


def parameter_rows(c: BlockConfig) -> int:
    """The block's parameters in rows of d_model: every weight matrix has d_model on one side (QKV, output,
    FFN up and down, the router and experts of a MoE block), plus the norms' weight (and bias) vectors."""
    from roofline.ops.ffn import up_width

    ffn = up_width(c) + c.ffn_dim
    ffn = c.n_experts * (ffn + 1) if c.n_experts else ffn
    return c.qkv_dim + c.attn_dim + ffn + 2 * (2 if c.norm == "layernorm" else 1)


ACTIVATION = Buffer(lambda c: c.tokens, lambda c: c.tp, "tp")  # TP: a [T, d_model] activation over the tp ranks
GRADIENTS = Buffer(parameter_rows, lambda c: c.dp, "dp")  # DP: the block's weight gradients over the dp ranks
STAGE = Buffer(lambda c: c.tokens, lambda c: c.pp, "pp")  # PP: one microbatch's [T, d_model] activation


def elements(c: BlockConfig) -> int:
    """E: the [tokens, d_model] activation a TP collective moves (the all-reduced, gathered or scattered whole)."""
    return ACTIVATION.elements(c)


def exchange(sends: list[tuple[torch.Tensor, int | None]], receives: list[tuple[torch.Tensor, int | None]]) -> None:
    """Point-to-point: post every send and receive at once (global ranks; None: no peer), then wait for all.

    Posting both together is what keeps a 1F1B pipeline from deadlocking where two neighbours each send before
    they receive (Megatron's send_forward_recv_backward); NCCL runs the batch as one group.
    """
    ops = [dist.P2POp(dist.isend, t, peer) for t, peer in sends if peer is not None]
    ops += [dist.P2POp(dist.irecv, t, peer) for t, peer in receives if peer is not None]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def _base(c: BlockConfig, buf: Buffer, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    dtype = FP8_OUT_DTYPE if c.dtype == "fp8" else TORCH_DTYPES[c.dtype]
    return torch.randn((buf.rows(c), c.d_model), device=device, dtype=dtype, generator=gen)


def rank_rows(base: torch.Tensor, r: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` of rank r's input (base·(r + 1), rounded in base's dtype as rank r rounds it), as float64."""
    return (base.index_select(0, rows.to(base.device)) * (r + 1)).double()


def _full_inputs(buf: Buffer):  # type: ignore[no-untyped-def]
    def make(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
        base = _base(c, buf, device, gen)
        inputs = {"base": base, "x": base * (buf.position() + 1)}
        if c.mode == "train" and buf is ACTIVATION:  # the backward's all-reduce: the input gradient
            inputs["grad"] = inputs["x"].clone()
        return inputs

    return make


def _chunk_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    """All-gather: this rank's contiguous tokens/n rows; the gathered output is every rank's, in rank order."""
    base, chunk, r = _base(c, ACTIVATION, device, gen), c.tokens // c.tp, ACTIVATION.position()
    return {"base": base, "x": base[r * chunk:(r + 1) * chunk] * (r + 1)}


def _all_reduce(buf: Buffer):  # type: ignore[no-untyped-def]
    def build(c: BlockConfig, i: Inputs):  # type: ignore[no-untyped-def]
        x, grad, group = i["x"], i.get("grad"), axis(buf.axis).group

        def run() -> torch.Tensor:
            dist.all_reduce(x, group=group)
            if grad is not None:
                dist.all_reduce(grad, group=group)
            return x

        return run

    return build


def _all_gather_build(c: BlockConfig, i: Inputs):
    x, group = i["x"], axis("tp").group
    out = torch.empty((c.tokens, c.d_model), dtype=x.dtype, device=x.device)
    return lambda: (_all_gather(out, x, group=group), out)[1]


def _reduce_scatter_build(c: BlockConfig, i: Inputs):
    x, group = i["x"], axis("tp").group
    out = torch.empty((c.tokens // c.tp, c.d_model), dtype=x.dtype, device=x.device)
    return lambda: (_reduce_scatter(out, x, group=group), out)[1]


def _sum_reference(buf: Buffer):  # type: ignore[no-untyped-def]
    return lambda c, i, rows: sum(rank_rows(i["base"], r, rows) for r in range(buf.ranks(c)))


def _gather_reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
    owner = rows // (c.tokens // c.tp)
    out = torch.empty((len(rows), c.d_model), dtype=torch.float64, device=i["base"].device)
    for r in range(c.tp):
        mine = owner == r
        out[mine.to(out.device)] = rank_rows(i["base"], r, rows[mine])
    return out


def _scatter_reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
    return _sum_reference(ACTIVATION)(c, i, rows + ACTIVATION.position() * (c.tokens // c.tp))


def _p2p_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    """Stage s sends base·(s + 1) forward and, in train mode, −base·(s + 1) back; the buffers it receives into."""
    base, s = _base(c, STAGE, device, gen), STAGE.position()
    inputs = {"base": base, "x": base * (s + 1), "received": torch.empty_like(base)}
    if c.mode == "train":
        inputs |= {"grad": base * -(s + 1), "grad_received": torch.empty_like(base)}
    return inputs


def _p2p_build(c: BlockConfig, i: Inputs):
    """One microbatch across a stage boundary: the activation to the next stage (and the gradient back)."""
    pp = axis("pp")
    before, after = pp.neighbour(-1), pp.neighbour(+1)
    forward = i["received"] if before is not None else i["x"]  # what this stage holds: stage 0 its own
    backward = (i["grad_received"] if after is not None else i["grad"]) if "grad" in i else None

    def run() -> tuple[torch.Tensor, torch.Tensor | None]:
        exchange([(i["x"], after)], [(i["received"], before)])
        if backward is not None:
            exchange([(i["grad"], before)], [(i["grad_received"], after)])
        return forward, backward

    return run


def _p2p_reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
    return rank_rows(i["base"], max(STAGE.position() - 1, 0), rows)


def _p2p_check(c: BlockConfig, i: Inputs, output: object, rows: torch.Tensor) -> float:
    """The activation from the previous stage, and in train mode the gradient from the next."""
    forward, backward = output  # type: ignore[misc]
    error = relative_error(take_rows(forward, rows), _p2p_reference(c, i, rows))
    if backward is not None:
        source = min(STAGE.position() + 1, c.pp - 1)
        error = max(error, relative_error(take_rows(backward, rows), -rank_rows(i["base"], source, rows)))
    return error


def _dims(buf: Buffer) -> Callable[[BlockConfig], dict[str, int]]:
    """A collective's own dimensions: n ranks, M elements in its buffer, out_bytes per element."""
    return lambda c: {"n": buf.ranks(c), "M": buf.elements(c), "out_bytes": out_bytes(c)}


ADDS = "(n - 1)*M//n"  # the reduction adds one rank performs: its 1/n of the elements, from n − 1 peers
ALL_REDUCE_BUS = "2*(n - 1)*M*out_bytes//n"  # NCCL-tests' bus bytes of an all-reduce (reduce-scatter + all-gather)
HALF_BUS = "(n - 1)*M*out_bytes//n"  # of an all-gather or a reduce-scatter


ROOFS = {"tp": "comm.busbw", "dp": "comm.busbw.dp", "pp": "comm.p2p"}  # analysis/placement's keys, by axis


def axis_of(op: Op) -> str:
    """The axis ("tp", "dp", "pp") whose group a collective op runs on."""
    return {roof: name for name, roof in ROOFS.items()}[op.roof]


def _collective(name: str, call: str, doc: str, build, reference, make_inputs,  # type: ignore[no-untyped-def]
                flops: Formula, min_bytes: Formula, buf: Buffer = ACTIVATION, group: str = "comm",
                **extra: object) -> Op:
    return Op(
        name=name, group=group, unit="comm", flops=flops, min_bytes=min_bytes, make_inputs=make_inputs,
        reference=reference,
        variants=(Variant("torch", build, requires=buf.needs_ranks, dtypes=tuple(TORCH_DTYPES),
                          doc=f"torch.distributed.{call} (NCCL on GPUs, gloo on the CPU)"),),
        doc=doc, applies=lambda c: buf.ranks(c) > 1 and (buf is not GRADIENTS or c.mode == "train"),
        roof=ROOFS[buf.axis], **extra,  # type: ignore[arg-type]
    )


def _all_reduce_op(name: str, after: str) -> Op:
    dims = _dims(ACTIVATION)
    return _collective(
        name, "all_reduce",
        f"All-reduce of the {after} partial sums: every rank gets the sum of the n ranks' [T, d_model].",
        _all_reduce(ACTIVATION), _sum_reference(ACTIVATION), _full_inputs(ACTIVATION),
        Formula(ADDS, "this rank's share of the reduction adds; M = T·d, the partial output", dims),
        Formula(ALL_REDUCE_BUS, "NCCL bus bytes: reduce-scatter then all-gather", dims),
        backward_flops=Formula(ADDS, "the conjugate all-reduce of the input gradient", dims),
        backward_bytes=Formula(ALL_REDUCE_BUS, "the same size as the forward's", dims))


ALLREDUCE_OUT_PROJ = _all_reduce_op("allreduce_out_proj", "output projection's")
ALLREDUCE_FFN_DOWN = _all_reduce_op("allreduce_ffn_down", "FFN-down's")

ALLREDUCE_GRADS = _collective(
    "allreduce_grads", "all_reduce",
    "Data parallelism: the all-reduce of the block's weight gradients, every rank's replica then holds their sum.",
    _all_reduce(GRADIENTS), _sum_reference(GRADIENTS), _full_inputs(GRADIENTS),
    Formula(ADDS, "M = P, the block's parameters; this rank's share of the reduction adds", _dims(GRADIENTS)),
    Formula(ALL_REDUCE_BUS, "NCCL bus bytes; gradients in the run's dtype", _dims(GRADIENTS)), buf=GRADIENTS)

ALL_GATHER = _collective(
    "all_gather", "all_gather_into_tensor",
    "All-gather: each rank contributes T/n rows of [T, d_model] and receives all T.",
    _all_gather_build, _gather_reference, _chunk_inputs, Formula("0", "no arithmetic"),
    Formula(HALF_BUS, "NCCL bus bytes; M = the gathered output", _dims(ACTIVATION)))

REDUCE_SCATTER = _collective(
    "reduce_scatter", "reduce_scatter_tensor",
    "Reduce-scatter: the sum of the ranks' [T, d_model], each rank keeping its T/n rows.",
    _reduce_scatter_build, _scatter_reference, _full_inputs(ACTIVATION),
    Formula(ADDS, "this rank's share of the reduction adds", _dims(ACTIVATION)),
    Formula(HALF_BUS, "NCCL bus bytes; M = the whole input", _dims(ACTIVATION)))

P2P_BYTES = "M*out_bytes"  # one microbatch's activation, what one link carries one way

P2P_ACTIVATION = _collective(
    "p2p_activation", "batch_isend_irecv",
    "Pipeline: one microbatch's activation [T, d_model] sent to the next stage (train: its gradient comes back). "
    "Once per microbatch and stage boundary, not per layer.",
    _p2p_build, _p2p_reference, _p2p_inputs, Formula("0", "a copy: no arithmetic"),
    Formula(P2P_BYTES, "M = T·d, the activation one link carries to the next stage", _dims(STAGE)),
    buf=STAGE, group="pipeline", check=_p2p_check,
    backward_flops=Formula("0", "no arithmetic"),
    backward_bytes=Formula(P2P_BYTES, "the activation's gradient, back to the previous stage", _dims(STAGE)))

# The block's collectives (ops/__init__.py places them in the block order, after the projections they sum, the
# stage boundary's send/recv and the gradients' all-reduce last), and those `calibrate_interconnect` measures.
OPS = (ALLREDUCE_OUT_PROJ, ALLREDUCE_FFN_DOWN, P2P_ACTIVATION, ALLREDUCE_GRADS)
COLLECTIVES = {"all_reduce": ALLREDUCE_OUT_PROJ, "all_gather": ALL_GATHER, "reduce_scatter": REDUCE_SCATTER,
               "p2p": P2P_ACTIVATION}
