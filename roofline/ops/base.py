"""Op and Variant: the one declaration of each op of the block, read by the profiler, plots, `roofline ops` and tests.

An `Op` is a piece of math with one FLOPs formula, one minimum-bytes formula, one way to make inputs and one
reference. A `Variant` is one implementation of it (PyTorch eager, an SDPA backend, torch.compile, a Triton
kernel), handed to the timer as a zero-argument closure, tritonbench style.

Conventions (the same everywhere):
- FLOPs count the useful arithmetic of the math: a matmul is 2·M·N·K; element-wise ops count the operations
  of their textbook formula (each op's docstring states it).
- min_bytes is the compulsory DRAM traffic ("model bytes"): each input read once, each output written once.
- Correctness: each op's reference is evaluated in float64 on a random sample of output rows (dim -2), so the
  check runs at full size without a second full-size computation.
- Training (`--mode train`): an op also declares its backward FLOPs and bytes, by the same rules (useful work
  only: a kernel that recomputes the forward in its backward, as FlashAttention does, is not credited for it).
  Its gradients are checked the same way: the output gradient is zero outside the sampled rows, so the float64
  reference of those rows, differentiated, gives the exact expected gradient of every input (train.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from roofline.config import BlockConfig

Inputs = dict[str, torch.Tensor]
Closure = Callable[[], object]

TORCH_DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8": torch.float8_e4m3fn,
}

# The dtypes a variant runs at unless it declares more: fp8 needs a dedicated path (scaled matmuls), so only
# the variants that have one list it.
NON_FP8 = ("fp32", "tf32", "bf16", "fp16")

# Relative Frobenius error ‖out − ref‖ / ‖ref‖ allowed per dtype (reference in float64).
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 2e-2, "fp16": 5e-3, "fp8": 1e-1}


def no_dims(config: BlockConfig) -> dict[str, int]:
    return {}


@functools.cache
def _compiled(expr: str):  # type: ignore[no-untyped-def]
    return compile(expr, expr, "eval")


@dataclass(frozen=True)
class Formula:
    """A FLOPs or bytes formula, declared once: `expr` is both what is computed and what `roofline ops` shows.

    expr is integer arithmetic over named dimensions: the block's (BlockConfig.dims: b, h, h_kv, hd, q, kv, T, d,
    d_ffn, bytes, pairs, E, k) and those the op adds (`dims`, e.g. a projection's K and N). '2*T*K*N' computes
    2·tokens·K·N and reads '2·T·K·N'; `note` says what it counts and why.
    """

    expr: str
    note: str = ""
    dims: Callable[[BlockConfig], dict[str, int]] = field(default=no_dims, compare=False)

    def __call__(self, c: BlockConfig) -> int:
        return int(eval(_compiled(self.expr), {"__builtins__": {}, "min": min}, {**c.dims, **self.dims(c)}))

    @property
    def text(self) -> str:
        shown = self.expr.replace("*", "·").replace("//", "/").replace(" - ", " − ")
        return f"{shown}  ({self.note})" if self.note else shown


class CheckFailed(Exception):
    """A variant's output is wrong in a way a single error number does not say (e.g. dropout keep rate)."""


def no_requirement(config: BlockConfig, device: torch.device) -> str | None:
    return None


NEEDS_GPU = "needs a CUDA GPU"  # the start of every reason a variant cannot run on this device (not this config)


def needs_cuda(config: BlockConfig, device: torch.device) -> str | None:
    return None if device.type == "cuda" else NEEDS_GPU


@dataclass(frozen=True)
class Variant:
    """One implementation of an op.

    build(config, inputs) returns the closure that is checked then timed. `requires` says why the variant
    cannot run here (None when it can); a closure may also raise `Unsupported` on its first call.
    scratch_bytes predicts memory the variant allocates beyond inputs and outputs (e.g. naive attention's N×N
    scores), so an op that would not fit is skipped before anything is allocated. dtypes: the dtypes the variant
    has a path for; at any other the row is skipped with a note. applies: whether the variant is one of this config
    at all (not planned otherwise), as Op.applies is for ops.
    """

    name: str
    build: Callable[[BlockConfig, Inputs], Closure]
    fused: bool = False
    requires: Callable[[BlockConfig, torch.device], str | None] = no_requirement
    scratch_bytes: Callable[[BlockConfig], int] = lambda c: 0
    doc: str = ""
    dtypes: tuple[str, ...] = NON_FP8
    applies: Callable[[BlockConfig], bool] = lambda c: True  # a variant of some configs only (split-KV: decode)


@dataclass(frozen=True)
class Op:
    """One op of the block, declared once.

    unit: "tensor" (matmul, limited by tensor-core FLOP/s at the op's dtype) or "vector" (CUDA-core FLOP/s).
    reference(config, inputs, rows) -> float64 reference of output rows `rows` (indices along dim -2).
    check(config, inputs, output, rows) -> relative error; defaults to output rows vs the reference.
    replaces: for a fused op, the op names of the chain it stands for (those that apply; see fusion.py).
    per_block: how many times the op runs in one block (LayerNorm and residual add run twice).
    gemm_shape: (M, N, K) of an op that is one plain matmul (the projections): `calibrate` includes these shapes
    in its search so that the measured roof bounds the block's own GEMMs.
    backward_flops / backward_bytes: the backward pass's FLOPs and compulsory bytes (train mode), given the
    gradient of every differentiable output; None for an op with no backward (the collectives).
    grad_check(config, inputs, output, grads, grad_output, rows) -> relative error of the input gradients, for
    ops whose reference cannot be differentiated (dropout: the reference does not know the random mask).
    roof: a collective's own roof, that of its process group's link ("comm.busbw" for TP, "comm.busbw.dp",
    "comm.p2p"); other ops meet the roof of their unit at their dtype.
    """

    name: str
    group: str
    unit: str
    flops: Formula
    min_bytes: Formula
    make_inputs: Callable[[BlockConfig, torch.device, torch.Generator], Inputs]
    reference: Callable[[BlockConfig, Inputs, torch.Tensor], torch.Tensor]
    variants: tuple[Variant, ...]
    doc: str
    check: Callable[[BlockConfig, Inputs, object, torch.Tensor], float] | None = None
    applies: Callable[[BlockConfig], bool] = lambda c: True
    replaces: tuple[str, ...] = ()
    per_block: int = 1
    backward_flops: Formula | None = None
    backward_bytes: Formula | None = None
    grad_check: Callable[..., float] | None = None
    gemm_shape: Callable[[BlockConfig], tuple[int, int, int]] | None = None  # (M, N, K) of a plain matmul op
    roof: str = ""  # the ceiling a collective meets (analysis/placement keys); "" = by unit and dtype

    def step_flops(self, c: BlockConfig) -> int:
        """FLOPs of the work a row times: the forward, plus the backward in train mode."""
        return self.flops(c) + (self.backward_flops(c) if c.mode == "train" and self.backward_flops else 0)

    def step_bytes(self, c: BlockConfig) -> int:
        """Compulsory bytes of the work a row times: the forward's, plus the backward's in train mode."""
        return self.min_bytes(c) + (self.backward_bytes(c) if c.mode == "train" and self.backward_bytes else 0)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"op {self.name} has no variant {name}")


def rand(shape: tuple[int, ...], config: BlockConfig, device: torch.device, gen: torch.Generator,
         scale: float = 1.0) -> torch.Tensor:
    """Fresh standard-normal data in the op's dtype (never zeros: they hide bugs and time faster)."""
    dtype = TORCH_DTYPES[config.dtype]
    make = torch.float32 if dtype == torch.float8_e4m3fn else dtype
    x = _cpu_randn_threaded(shape, make, gen) if device.type == "cpu" else None
    if x is None:
        x = torch.randn(shape, device=device, dtype=make, generator=gen)
    if scale != 1.0:
        x.mul_(scale)
    return x.to(dtype)


PARALLEL_RANDN_ELEMENTS = 1 << 22  # a CPU tensor this large is filled by several threads (torch's randn uses one)


def _cpu_randn_threaded(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor | None:
    """Large CPU tensors filled in one chunk per thread, each chunk from its own generator seeded by `gen` (the same
    seed gives the same data): the 8.6 GB scores of a CPU profile at 8192 take 15 s instead of 29 on 2 cores."""
    threads = torch.get_num_threads()
    if threads < 2 or numel(*shape) < PARALLEL_RANDN_ELEMENTS:
        return None
    from concurrent.futures import ThreadPoolExecutor

    x = torch.empty(shape, dtype=dtype)
    seeds = torch.randint(0, 2 ** 62, (threads,), generator=gen).tolist()
    chunks = x.view(-1).chunk(threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda part, seed: part.normal_(generator=torch.Generator().manual_seed(seed)), chunks, seeds))
    return x


def take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` along dim -2, as float64 on the CPU-or-GPU where `t` lives."""
    return t.index_select(-2, rows.to(t.device)).double()


def times_weight_t(x: torch.Tensor, weight: torch.Tensor, chunk_bytes: int = 16 << 20) -> torch.Tensor:
    """x · weightᵀ in float64 (x float64 [R, K], weight [N, K] in any dtype), a slice of the weight converted at a time
    into one reused buffer: a whole float64 copy of a 16384×4096 weight costs 512 MB of fresh pages, and the check
    of an FFN projection on the 2-core CPU twice the time (0.55 → 0.28 s). Under autograd (a train row's gradient
    check differentiates the reference) the reused buffer would break the graph: one product, as before."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return x @ weight.double().T
    n, k = weight.shape
    step = max(1, chunk_bytes // (8 * k))
    out = torch.empty(x.shape[0], n, dtype=torch.float64, device=x.device)
    buf = torch.empty(min(step, n), k, dtype=torch.float64, device=x.device)
    for j in range(0, n, step):
        part = buf[: min(step, n - j)]
        part.copy_(weight[j:j + step])
        out[:, j:j + step] = x @ part.T
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN/inf anywhere gives inf (never passes)."""
    out = out.double()
    ref = ref.to(out.device).double()
    if out.shape != ref.shape:
        return float("inf")
    if not torch.isfinite(out).all():
        return float("inf")
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def primary(output: object) -> torch.Tensor:
    """A variant's main output: the first of a tuple (the fused norm also returns the new residual)."""
    out = output[0] if isinstance(output, (tuple, list)) else output
    assert isinstance(out, torch.Tensor)
    return out


def default_check(op: Op, config: BlockConfig, inputs: Inputs, output: object, rows: torch.Tensor) -> float:
    return relative_error(take_rows(primary(output), rows), op.reference(config, inputs, rows))


def numel(*dims: int) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def needs_triton(config: BlockConfig, device: torch.device) -> str | None:
    """Our Triton kernels run on CUDA GPUs (on CPU they are tested under TRITON_INTERPRET=1, not timed)."""
    import importlib.util

    if device.type != "cuda":
        return f"{NEEDS_GPU} (our Triton kernels)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if config.dtype not in ("bf16", "fp16", "fp32"):
        return f"our Triton kernels have no {config.dtype} path"
    return None
