"""Fusion opportunities in a trace: chains of memory-bound kernels between compute-bound ones, what they move now
against what they must move, and what fusing them would save at the measured copy roof.

A chain is a maximal run of consecutive calls of one phase (forward or backward) on the vector units — norms,
RoPE, masks, softmax, casts, copies, activations — between two calls on the tensor cores (matmuls, fused
attention). Unfused, each of its kernels reads its inputs from DRAM and writes its outputs back: the chain moves
Σ of its kernels' compulsory bytes. Fused into one kernel it must still read what enters the chain from outside
(weights, the residual stream, the previous GEMM's output) and write what leaves it (what a later call reads, or
the step hands back: its outputs and gradients) — every tensor passed only from one kernel of the chain to
another stays on chip. At the copy roof the fused chain takes max(bytes / copy bandwidth, FLOPs / vector peak):
the difference to the chain's measured time is what fusing it would save.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roofline.analysis.trace import trace_rows
from roofline.results import Results, Row

# What already fuses a chain holding these ops (each that applies is named; torch.compile fuses any chain).
EXISTING = (
    (("softmax", "qk_t", "attn_v"), "fused attention: SDPA (--attn-impl sdpa), our Triton FlashAttention"),
    (("mask",), "no mask tensor: a causal kernel (SDPA is_causal, FlashAttention)"),
    (("repeat_kv",), "no K/V copy: SDPA enable_gqa, FlashAttention"),
    (("rope", "qk_norm"), "one RoPE kernel: torch.compile (rope · compile), flash-attn's rotary"),
    (("residual_add", "rmsnorm", "layernorm", "dropout"), "our Triton add + norm (fused_add_dropout_norm), "
                                                          "torch.compile"),
    (("swiglu", "geglu", "gelu", "activation"), "torch.compile, Liger's SwiGLU/GeGLU"),
    (("kv_cache",), "a cache written in place (StaticCache)"),
    (("moe_router", "moe_experts"), "grouped expert GEMMs (torch._grouped_mm), torch.compile"),
)
MIN_CALLS = 2


@dataclass
class Chain:
    """One fusion opportunity: consecutive memory-bound calls, now and fused at the roof."""

    phase: str
    ops: list[str]  # the block ops of its calls, in order, each once
    rows: list[int]  # positions in res.rows
    kernels: int
    time_s: float
    bytes_now: float  # Σ of its calls' compulsory bytes
    bytes_min: float  # what enters the chain from outside and what leaves it
    flops: float
    floor_s: float  # the fused chain at the roofs
    saving_s: float
    saving_pct: float | None  # of the step
    modules: list[str] = field(default_factory=list)
    existing: str = ""


def opportunities(res: Results) -> list[Chain]:
    """Every chain of at least MIN_CALLS calls that fusing would make faster, the largest saving first."""
    rows = trace_rows(res)
    position = {id(r): i for i, r in enumerate(res.rows)}
    readers: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        for tensor in r.trace.reads if r.trace else {}:
            readers.setdefault(tensor, []).append(k)
    handed = set(res.run.trace.outputs) if res.run.trace else set()
    step_s = (res.run.trace.step_time_s or res.run.trace.kernel_time_s) if res.run.trace else None
    out = []
    for run in _runs(rows):
        if len(run) < MIN_CALLS:
            continue
        chain = _chain(rows, run, readers, handed, step_s)
        if chain is not None and chain.saving_s > 0:
            chain.rows = [position[id(rows[k])] for k in run]
            out.append(chain)
    return sorted(out, key=lambda c: -c.saving_s)


def _runs(rows: list[Row]) -> list[list[int]]:
    """Maximal runs of consecutive vector-unit calls of one phase (positions in rows)."""
    runs: list[list[int]] = [[]]
    for k, r in enumerate(rows):
        phase = r.trace.phase if r.trace else ""
        previous = rows[runs[-1][-1]].trace if runs[-1] else None
        if r.unit == "tensor" or (previous is not None and previous.phase != phase):
            runs.append([])
        if r.unit != "tensor":
            runs[-1].append(k)
    return [run for run in runs if run]


def _chain(rows: list[Row], run: list[int], readers: dict[str, list[int]], handed: set[str],
           step_s: float | None) -> Chain | None:
    members = [rows[k] for k in run]
    last = run[-1]
    entering: dict[str, int] = {}
    written: dict[str, int] = {}
    for r in members:
        assert r.trace is not None
        for tensor, nbytes in r.trace.reads.items():
            if tensor not in written:
                entering[tensor] = max(entering.get(tensor, 0), nbytes)
        for tensor, nbytes in r.trace.writes.items():
            written[tensor] = max(written.get(tensor, 0), nbytes)
    leaving = sum(nbytes for tensor, nbytes in written.items()
                  if tensor in handed or any(k > last for k in readers.get(tensor, ())))
    bytes_min = float(sum(entering.values()) + leaving)
    bandwidth = next((r.peak_bytes_per_s for r in members if r.peak_bytes_per_s), None)
    vector_peak = next((r.peak_flops_per_s for r in members if r.peak_flops_per_s), None)
    if not bandwidth:
        return None
    flops = sum(r.flops for r in members)
    floor_s = max(bytes_min / bandwidth, flops / vector_peak if vector_peak else 0.0)
    time_s = sum(r.time_median_s or 0.0 for r in members)
    ops = list(dict.fromkeys(r.op for r in members))
    modules = list(dict.fromkeys(r.trace.module for r in members if r.trace and r.trace.module))
    return Chain(phase=members[0].trace.phase if members[0].trace else "", ops=ops, rows=[],
                 kernels=sum(max(len(r.trace.kernels), 1) for r in members if r.trace), time_s=time_s,
                 bytes_now=sum(r.min_bytes for r in members), bytes_min=bytes_min, flops=flops, floor_s=floor_s,
                 saving_s=time_s - floor_s, saving_pct=100 * (time_s - floor_s) / step_s if step_s else None,
                 modules=modules, existing=existing(ops))


def existing(ops: list[str]) -> str:
    """What already fuses (parts of) a chain of these ops; torch.compile fuses any chain of element-wise kernels."""
    found = [what for names, what in EXISTING if set(names) & set(ops)]
    if not found:
        return "torch.compile (folds copies and casts into their neighbours)"
    return "; ".join(found) + ("" if any("torch.compile" in w for w in found) else "; torch.compile")
