"""Our split-KV decode attention (kernels/flash_decoding.py) against its float64 reference, and its catalog row.

Without CUDA the kernel runs on the CPU under Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported) at small, odd shapes; the test marked ``gpu`` runs KV caches of 8192 and 32768 keys on CUDA.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from roofline.kernels import flash_decoding as fd  # noqa: E402
from roofline.kernels.flash_decoding import flash_decoding, flash_decoding_reference  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}  # relative Frobenius error vs float64
HALF_DTYPES = [torch.bfloat16, torch.float16]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output and the partials start as NaN, so an element the kernels never write fails the test."""
    for name in ("empty", "empty_like"):
        make = getattr(torch, name)

        def nan_make(*args, _make=make, **kwargs) -> torch.Tensor:
            t = _make(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t

        monkeypatch.setattr(torch, name, nan_make)


def decode_inputs(batch: int, heads: int, kv_heads: int, kv_len: int, head_dim: int, dtype: torch.dtype,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = ((batch, heads, 1, head_dim), (batch, kv_heads, kv_len, head_dim), (batch, kv_heads, kv_len, head_dim))
    return tuple(torch.randn(s, generator=gen).to(device=DEVICE, dtype=dtype) for s in shapes)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "non-finite output (an element not written?)"
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e} > {TOLERANCE[dtype]:.0e} for {dtype}"


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("heads, kv_heads", [(6, 2), (4, 4)], ids=["gqa6/2", "mha4/4"])
@pytest.mark.parametrize("batch, kv_len", [(1, 37), (3, 100), (1, 257)])
@pytest.mark.parametrize("num_splits", [1, 3, None, 40], ids=["s1", "s3", "default", "s40"])
def test_matches_reference(batch: int, kv_len: int, heads: int, kv_heads: int, num_splits: int | None,
                           dtype: torch.dtype) -> None:
    """Splits of 16-key tiles under the interpreter: 40 splits is more than the 3 to 17 tiles of these caches."""
    q, k, v = decode_inputs(batch, heads, kv_heads, kv_len, 64, dtype)
    assert_close(flash_decoding(q, k, v, num_splits=num_splits), flash_decoding_reference(q, k, v), dtype)


@pytest.mark.parametrize("block_n, num_splits", [(32, 2), (64, 5)])
def test_head_dim_128_scale_and_strided_cache(block_n: int, num_splits: int) -> None:
    """A [batch, seq, kv_heads, head_dim] cache seen as [batch, kv_heads, seq, head_dim], a custom scale, MQA."""
    q, _, _ = decode_inputs(2, 8, 1, 1, 128, torch.float16)
    k, v = (torch.randn(2, 77, 1, 128, generator=torch.Generator().manual_seed(s)).to(DEVICE, torch.float16)
            .transpose(1, 2) for s in (1, 2))
    out = flash_decoding(q, k, v, scale=0.3, num_splits=num_splits, block_n=block_n)
    assert_close(out, flash_decoding_reference(q, k, v, scale=0.3), torch.float16)


def test_splits_are_whole_tiles_and_never_empty() -> None:
    """kv 100 in 16-key tiles (7 tiles): 6 splits asked → 2 tiles each → 4 splits run, the last one of 4 keys."""
    assert fd.split_plan(100, 6, 16) == (4, 32)
    assert fd.split_plan(100, 40, 16) == (7, 16)
    assert fd.split_plan(100, 1, 64) == (1, 128)
    assert fd.split_plan(8192, 32, 64) == (32, 256)
    assert fd.split_plan(8192, 9, 64) == (9, 960)
    assert fd.default_num_splits(1, 8, 8192, torch.device("cpu")) == 3


@pytest.mark.parametrize("shapes, dtype, kwargs, message", [
    (((1, 2, 1, 64),) * 3, torch.float32, {}, "float16 or all bfloat16"),
    (((1, 2, 3, 64), (1, 2, 8, 64), (1, 2, 8, 64)), torch.float16, {}, "q_len must be 1"),
    (((1, 2, 1, 32), (1, 2, 8, 32), (1, 2, 8, 32)), torch.float16, {}, "head_dim"),
    (((1, 3, 1, 64), (1, 2, 8, 64), (1, 2, 8, 64)), torch.float16, {}, "multiple of kv_heads"),
    (((1, 2, 1, 64), (1, 2, 8, 64), (1, 2, 9, 64)), torch.float16, {}, "k and v"),
    (((1, 2, 1, 64), (1, 2, 0, 64), (1, 2, 0, 64)), torch.float16, {}, "kv_len"),
    (((2, 1, 64),) * 3, torch.float16, {}, r"\[batch, heads, seq, head_dim\]"),
    (((1, 2, 1, 64), (1, 2, 8, 64), (1, 2, 8, 64)), torch.float16, dict(num_splits=0), "num_splits"),
    (((1, 2, 1, 64), (1, 2, 8, 64), (1, 2, 8, 64)), torch.float16, dict(block_n=48), "block_n"),
    (((1, 2, 1, 64), (1, 2, 8, 64), (1, 2, 8, 64)), torch.float16, dict(scale=float("nan")), "scale"),
])
def test_rejects_bad_input(shapes: tuple, dtype: torch.dtype, kwargs: dict, message: str) -> None:
    q, k, v = (torch.ones(s, dtype=dtype, device=DEVICE) for s in shapes)
    with pytest.raises(ValueError, match=message):
        flash_decoding(q, k, v, **kwargs)


# the catalog's variant: decode only


def small_config(mode: str):
    from roofline.config import make_config

    return make_config("llama3-8b", d_model=384, n_heads=6, n_kv_heads=2, head_dim=64, ffn_dim=128, batch=3,
                       seq_len=24, kv_cache_len=100, mode=mode, dtype="bf16")


def test_catalog_variant_passes_the_attention_check_in_decode() -> None:
    from roofline.ops import get_op
    from roofline.ops.base import TOLERANCE, default_check

    config = small_config("decode")
    op = get_op("attention")
    variant = op.variant("triton_splitkv")
    assert variant.fused and variant.requires(config, DEVICE) in (None, "needs a CUDA GPU (our Triton kernels)")
    inputs = op.make_inputs(config, DEVICE, torch.Generator(device=DEVICE).manual_seed(7))
    output = variant.build(config, inputs)()
    assert output.shape == (3, 6, 1, 64)
    assert default_check(op, config, inputs, output, torch.arange(config.q_len)) < TOLERANCE["bf16"]


@pytest.mark.parametrize("mode", ["prefill", "train"])
def test_catalog_variant_is_planned_in_decode_only(mode: str) -> None:
    from roofline.ops import get_op

    variant = get_op("attention").variant("triton_splitkv")
    assert variant.applies(small_config("decode")) and not variant.applies(small_config(mode))


def test_catalog_variant_says_what_it_lacks() -> None:
    from roofline.ops.attention import needs_decode_triton

    config, cuda = small_config("decode"), torch.device("cuda")
    assert needs_decode_triton(config, cuda) is None
    assert "fp32" in needs_decode_triton(config.replace(dtype="fp32"), cuda)
    assert "head_dim 16" in needs_decode_triton(config.replace(head_dim=16, d_model=96), cuda)


# full size, on a GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("kv_len", [8192, 32768])
@pytest.mark.parametrize("batch", [1, 64])
def test_llama_cache_on_gpu(batch: int, kv_len: int, dtype: torch.dtype) -> None:
    """llama3-8b's attention (32 query heads, 8 KV heads, head_dim 128); the default and two explicit splits."""
    q, k, v = decode_inputs(batch, 32, 8, kv_len, 128, dtype)
    ref = flash_decoding_reference(q[:4], k[:4], v[:4])  # the first sequences: float64 over 64 is slow
    for num_splits in (None, 1, 16):
        assert_close(flash_decoding(q, k, v, num_splits=num_splits)[:4], ref, dtype)
