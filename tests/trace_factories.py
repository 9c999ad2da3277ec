"""Factories for `roofline trace --module tests.trace_factories:NAME` in tests/test_trace.py: a plain module, and the
ways a user's factory can go wrong."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyBlock(nn.Module):
    """A pre-norm block written by hand: LayerNorm, QKV, SDPA, out projection, GELU MLP."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(attn)
        return x + self.down(F.gelu(self.up(x)))


def make(seq_len: int = 16, batch: int = 2):
    """A plain module and its input (moved and cast by roofline: this factory takes no device or dtype)."""
    torch.manual_seed(0)
    return TinyBlock(), (torch.randn(batch, seq_len, 32),)


def gpt_block(device: torch.device, dtype: torch.dtype, seq_len: int, batch: int):
    """A GPT-7B-sized block written by hand (d 4096, 32 heads, FFN 16384): `--module` on a GPU."""
    torch.manual_seed(0)
    block = TinyBlock(d=4096, heads=32).to(device=device, dtype=dtype)
    return block, (torch.randn(batch, seq_len, 4096, device=device, dtype=dtype),)


def make_placed(device: torch.device, dtype: torch.dtype, seq_len: int, batch: int):
    """A factory that places its module itself."""
    return make(seq_len, batch)[0].to(device=device, dtype=dtype), {"x": torch.randn(batch, seq_len, 32,
                                                                                      device=device, dtype=dtype)}


def raises():
    raise ValueError("the checkpoint path is wrong")


def not_a_pair():
    return TinyBlock()


class OutOfMemoryAfter(nn.Module):
    """Runs normally `calls` times, then raises torch.OutOfMemoryError (a step that no longer fits)."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls < 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return self.lin(x)


def out_of_memory_when_profiled():
    """Warm-up (1 step) and timing (3 steps) fit; the profiled steps run out of memory."""
    return OutOfMemoryAfter(calls=4), torch.randn(4, 8)
