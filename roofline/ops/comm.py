"""Collectives of a tensor-parallel block: the all-reduces after the row-parallel projections, and the
all-gather and reduce-scatter that measure the interconnect (`parallel.calibrate_interconnect`).

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from roofline.config import BlockConfig
from roofline.ops.base import TORCH_DTYPES, Formula, Inputs, Op, Variant
from roofline.ops.linear import FP8_OUT_DTYPE, out_bytes

# torch ≥ 2.11 renamed the tensor collectives (the old names warn).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class Buffer:
    """The [rows, d_model] tensor a collective moves, and the ranks it spans."""

    rows: Callable[[BlockConfig], int]
    ranks: Callable[[BlockConfig], int]

    def elements(self, c: BlockConfig) -> int:
        return self.rows(c) * c.d_model


def parameter_rows(c: BlockConfig) -> int:
    """The block's parameters in rows of d_model: every weight matrix has d_model on one side (QKV, output,
    FFN up and down, the router and experts of a MoE block), plus the norms' weight (and bias) vectors."""
    from roofline.ops.ffn import up_width

    ffn = up_width(c) + c.ffn_dim
    ffn = c.n_experts * (ffn + 1) if c.n_experts else ffn
    return c.qkv_dim + c.attn_dim + ffn + 2 * (2 if c.norm == "layernorm" else 1)


ACTIVATION = Buffer(lambda c: c.tokens, lambda c: c.tp)  # TP: a [T, d_model] activation over the tp ranks
GRADIENTS = Buffer(parameter_rows, lambda c: c.dp)  # DP: the block's weight gradients over the dp ranks


def elements(c: BlockConfig) -> int:
    """E: the [tokens, d_model] activation a TP collective moves (the all-reduced, gathered or scattered whole)."""
    return ACTIVATION.elements(c)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def needs_ranks(c: BlockConfig, device: torch.device) -> str | None:
    """A collective needs the process group of `profile --tp/--dp` with exactly tp·dp ranks."""
    if dist.is_initialized() and dist.get_world_size() == c.tp * c.dp:
        return None
    flag = f"--dp {c.dp}" if c.dp > 1 else f"--tp {c.tp}"
    return f"needs {c.tp * c.dp} ranks in a process group (roofline profile {flag})"


def _base(c: BlockConfig, buf: Buffer, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    dtype = FP8_OUT_DTYPE if c.dtype == "fp8" else TORCH_DTYPES[c.dtype]
    return torch.randn((buf.rows(c), c.d_model), device=device, dtype=dtype, generator=gen)


def rank_rows(base: torch.Tensor, r: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` of rank r's input (base·(r + 1), rounded in base's dtype as rank r rounds it), as float64."""
    return (base.index_select(0, rows.to(base.device)) * (r + 1)).double()


def _full_inputs(buf: Buffer):  # type: ignore[no-untyped-def]
    def make(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
        base = _base(c, buf, device, gen)
        inputs = {"base": base, "x": base * (rank() + 1)}
        if c.mode == "train" and buf is ACTIVATION:  # the backward's all-reduce: the input gradient
            inputs["grad"] = inputs["x"].clone()
        return inputs

    return make


def _chunk_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    """All-gather: this rank's contiguous tokens/n rows; the gathered output is every rank's, in rank order."""
    base, chunk = _base(c, ACTIVATION, device, gen), c.tokens // c.tp
    return {"base": base, "x": base[rank() * chunk:(rank() + 1) * chunk] * (rank() + 1)}


def _all_reduce(c: BlockConfig, i: Inputs):
    x, grad = i["x"], i.get("grad")

    def run() -> torch.Tensor:
        dist.all_reduce(x)
        if grad is not None:
            dist.all_reduce(grad)
        return x

    return run


def _all_gather_build(c: BlockConfig, i: Inputs):
    x = i["x"]
    out = torch.empty((c.tokens, c.d_model), dtype=x.dtype, device=x.device)
    return lambda: (_all_gather(out, x), out)[1]


def _reduce_scatter_build(c: BlockConfig, i: Inputs):
    x = i["x"]
    out = torch.empty((c.tokens // c.tp, c.d_model), dtype=x.dtype, device=x.device)
    return lambda: (_reduce_scatter(out, x), out)[1]


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
    return _sum_reference(ACTIVATION)(c, i, rows + rank() * (c.tokens // c.tp))


def _dims(buf: Buffer) -> Callable[[BlockConfig], dict[str, int]]:
    """A collective's own dimensions: n ranks, M elements in its buffer, out_bytes per element."""
    return lambda c: {"n": buf.ranks(c), "M": buf.elements(c), "out_bytes": out_bytes(c)}


ADDS = "(n - 1)*M//n"  # the reduction adds one rank performs: its 1/n of the elements, from n − 1 peers
ALL_REDUCE_BUS = "2*(n - 1)*M*out_bytes//n"  # NCCL-tests' bus bytes of an all-reduce (reduce-scatter + all-gather)
HALF_BUS = "(n - 1)*M*out_bytes//n"  # of an all-gather or a reduce-scatter


def _collective(name: str, call: str, doc: str, build, reference, make_inputs,  # type: ignore[no-untyped-def]
                flops: Formula, min_bytes: Formula, buf: Buffer = ACTIVATION, **train: object) -> Op:
    return Op(
        name=name, group="comm", unit="comm", flops=flops, min_bytes=min_bytes, make_inputs=make_inputs,
        reference=reference,
        variants=(Variant("torch", build, requires=needs_ranks, dtypes=tuple(TORCH_DTYPES),
                          doc=f"torch.distributed.{call} (NCCL on GPUs, gloo on the CPU)"),),
        doc=doc, applies=lambda c: buf.ranks(c) > 1 and (buf is ACTIVATION or c.mode == "train"),
        **train,  # type: ignore[arg-type]
    )


def _all_reduce_op(name: str, after: str) -> Op:
    dims = _dims(ACTIVATION)
    return _collective(
        name, "all_reduce",
        f"All-reduce of the {after} partial sums: every rank gets the sum of the n ranks' [T, d_model].",
        _all_reduce, _sum_reference(ACTIVATION), _full_inputs(ACTIVATION),
        Formula(ADDS, "this rank's share of the reduction adds; M = T·d, the partial output", dims),
        Formula(ALL_REDUCE_BUS, "NCCL bus bytes: reduce-scatter then all-gather", dims),
        backward_flops=Formula(ADDS, "the conjugate all-reduce of the input gradient", dims),
        backward_bytes=Formula(ALL_REDUCE_BUS, "the same size as the forward's", dims))


ALLREDUCE_OUT_PROJ = _all_reduce_op("allreduce_out_proj", "output projection's")
ALLREDUCE_FFN_DOWN = _all_reduce_op("allreduce_ffn_down", "FFN-down's")

ALLREDUCE_GRADS = _collective(
    "allreduce_grads", "all_reduce",
    "Data parallelism: the all-reduce of the block's weight gradients, every rank's replica then holds their sum.",
    _all_reduce, _sum_reference(GRADIENTS), _full_inputs(GRADIENTS),
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

# The block's collectives (ops/__init__.py places them in the block order, after the projections they sum, the
# gradients' all-reduce last), and those `calibrate_interconnect` measures.
OPS = (ALLREDUCE_OUT_PROJ, ALLREDUCE_FFN_DOWN, ALLREDUCE_GRADS)
COLLECTIVES = {"all_reduce": ALLREDUCE_OUT_PROJ, "all_gather": ALL_GATHER, "reduce_scatter": REDUCE_SCATTER}
