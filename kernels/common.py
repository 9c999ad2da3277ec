"""What our Triton kernels share: the interpreter flag, the dot that works under it, and the device check.

Under TRITON_INTERPRET=1 Triton runs kernels on CPU tensors (the CPU tests); its interpreter multiplies the raw
bits of bf16 values in tl.dot, so `dot` upcasts the operands there. On a GPU it is the plain tensor-core tl.dot.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton runs kernels on the CPU


@triton.jit
def dot(a, b, acc, IN_FP32: tl.constexpr):
    """tl.dot; IN_FP32 upcasts the operands, for Triton's CPU interpreter, which multiplies the raw
    bits of bf16 values. On the GPU IN_FP32 is False: bf16/fp16 tensor cores, fp32 accumulation."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc) if IN_FP32 else tl.dot(a, b, acc)


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The IN_FP32 flag of `dot` for operands of this dtype."""
    return INTERPRET and dtype == torch.bfloat16


def require_device(x: torch.Tensor, name: str = "x") -> None:
    """A kernel's inputs must be on a CUDA device, unless Triton interprets kernels on the CPU."""
    if not x.is_cuda and not INTERPRET:
        raise ValueError(f"{name} is on {x.device}: the kernel needs a CUDA device (or TRITON_INTERPRET=1)")
