"""Our Triton kernels against their PyTorch references.

Without CUDA the kernels run on the CPU under Triton's interpreter (TRITON_INTERPRET=1, set here
before Triton is imported), at small, deliberately odd shapes. Tests marked ``gpu`` run full-size
shapes on CUDA. Speed is measured by `roofline profile`, never asserted here.
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from roofline.kernels import flash_attention as flash  # noqa: E402
from roofline.kernels.flash_attention import flash_attention, flash_attention_reference  # noqa: E402
from roofline.kernels.fused_add_dropout_norm import (  # noqa: E402
    fused_add_dropout_norm,
    fused_add_dropout_norm_reference,
)
from roofline.kernels.softmax import softmax, softmax_reference  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}  # relative Frobenius error
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HALF_DTYPES = [torch.bfloat16, torch.float16]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs the launchers allocate start as NaN, so an element a kernel never writes fails the test."""
    empty_like = torch.empty_like

    def nan_empty_like(*args, **kwargs) -> torch.Tensor:
        t = empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape
    assert torch.isfinite(out).all(), "non-finite output (an element not written?)"
    err = relative_error(out, ref)
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e} > {TOLERANCE[dtype]:.0e} for {dtype}"


# fused residual add + dropout + norm


def norm_inputs(shape: tuple[int, ...], dtype: torch.dtype, bias: bool = True):
    d = shape[-1]
    return (randn(*shape, dtype=dtype, seed=1), randn(*shape, dtype=dtype, seed=2),
            1.0 + 0.1 * randn(d, dtype=dtype, seed=3), randn(d, dtype=dtype, seed=4) if bias else None)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape, norm, bias", [
    ((37, 1000), "layernorm", True),
    ((37, 1000), "rmsnorm", False),
    ((2, 3, 129), "layernorm", False),
    ((2, 3, 129), "rmsnorm", True),
])
def test_norm_matches_reference(shape: tuple[int, ...], norm: str, bias: bool, dtype: torch.dtype) -> None:
    x, residual, weight, b = norm_inputs(shape, dtype, bias)
    out, new_residual = fused_add_dropout_norm(x, residual, weight, b, p=0.0, seed=0, norm=norm)
    ref_out, ref_residual = fused_add_dropout_norm_reference(x, residual, weight, b, p=0.0, norm=norm)
    assert out.dtype == new_residual.dtype == dtype
    assert_close(out, ref_out, dtype)
    assert_close(new_residual, ref_residual, dtype)


@pytest.mark.parametrize("dtype", [
    torch.float32, torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="Triton's interpreter truncates fp32 → bf16 (the GPU rounds)")),
], ids=str)
def test_no_dropout_is_exact(dtype: torch.dtype) -> None:
    x, residual, weight, bias = norm_inputs((5, 300), dtype)
    _, new_residual = fused_add_dropout_norm(x, residual, weight, bias, p=0.0, seed=7)
    assert torch.equal(new_residual, (x.float() + residual.float()).to(dtype))


def test_dropout_is_seeded() -> None:
    x, residual, weight, bias = norm_inputs((8, 500), torch.float32)
    first = fused_add_dropout_norm(x, residual, weight, bias, p=0.5, seed=11)
    again = fused_add_dropout_norm(x, residual, weight, bias, p=0.5, seed=11)
    other = fused_add_dropout_norm(x, residual, weight, bias, p=0.5, seed=12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert (first[1] != other[1]).float().mean() > 0.3


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate_and_scale(p: float) -> None:
    x, residual, weight, bias = norm_inputs((32, 1024), torch.float32)
    _, new_residual = fused_add_dropout_norm(x, residual, weight, bias, p=p, seed=3)
    kept = new_residual != residual
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close((new_residual - residual)[kept], x[kept] / (1 - p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_dropout_then_norm(norm: str, dtype: torch.dtype) -> None:
    """out == norm(new_residual), with the kernel's own mask replayed (read off a float32 run)."""
    x, residual, weight, bias = norm_inputs((13, 1000), dtype)
    _, mask_run = fused_add_dropout_norm(x.float(), residual.float(), weight, bias, p=0.2, seed=5, norm=norm)
    keep_mask = mask_run != residual.float()
    out, new_residual = fused_add_dropout_norm(x, residual, weight, bias, p=0.2, seed=5, norm=norm)
    ref_out, ref_residual = fused_add_dropout_norm_reference(x, residual, weight, bias, p=0.2, norm=norm,
                                                             keep_mask=keep_mask)
    assert_close(new_residual, ref_residual, dtype)
    assert_close(out, ref_out, dtype)
    renormed, _ = fused_add_dropout_norm_reference(new_residual, torch.zeros_like(new_residual), weight, bias,
                                                   norm=norm)
    assert_close(out, renormed, dtype)


def test_dropout_everything() -> None:
    x, residual, weight, bias = norm_inputs((3, 100), torch.float32)
    _, new_residual = fused_add_dropout_norm(x, residual, weight, bias, p=1.0, seed=1)
    assert torch.equal(new_residual, residual)


@pytest.mark.parametrize("change, message", [
    (dict(norm="batchnorm"), "norm must be"),
    (dict(p=1.5), "dropout probability"),
    (dict(seed=-1), "seed"),
    (dict(x=torch.zeros(4, 8, dtype=torch.int32)), "float16, bfloat16 or float32"),
    (dict(residual=torch.ones(4, 9)), "residual must match"),
    (dict(x=torch.ones(8, 4).t(), residual=torch.ones(8, 4).t()), "contiguous"),
    (dict(weight=torch.ones(7)), "weight must be"),
    (dict(bias=torch.ones(8, 1)), "bias must be"),
])
def test_norm_rejects_bad_input(change: dict, message: str) -> None:
    args = dict(x=torch.ones(4, 8), residual=torch.ones(4, 8), weight=torch.ones(8), bias=torch.ones(8),
                p=0.1, seed=0, norm="layernorm")
    args.update(change)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=message):
        fused_add_dropout_norm(**args)


# softmax


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape, scale, block_size", [
    ((13, 1151), 1.0, None),  # one block, odd width
    ((2, 3, 100), -0.7, None),  # any leading dims, negative scale
    ((3, 5000), 0.3, 512),  # looped: 10 blocks, the last one partial
    ((1, 1), 1.0, None),
])
def test_softmax_matches_reference(shape: tuple[int, ...], scale: float, block_size: int | None,
                                   dtype: torch.dtype) -> None:
    x = randn(*shape, dtype=dtype)
    y = softmax(x, scale, block_size=block_size)
    assert y.dtype == dtype
    assert_close(y, softmax_reference(x, scale), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("q_len, kv_len", [(37, 50), (50, 37), (1, 70), (37, 37)])
@pytest.mark.parametrize("block_size", [None, 16], ids=["one_block", "looped"])
def test_causal_softmax(q_len: int, kv_len: int, block_size: int | None, dtype: torch.dtype) -> None:
    """Bottom-right causal mask; with q_len > kv_len the first rows see nothing and must be 0."""
    x = randn(1, 2, q_len, kv_len, dtype=dtype)
    y = softmax(x, 0.5, causal=True, block_size=block_size)
    assert_close(y, softmax_reference(x, 0.5, causal=True), dtype)


@pytest.mark.parametrize("block_size", [None, 64])
def test_softmax_of_masked_scores(block_size: int | None) -> None:
    """-inf inputs (an already-masked score row), including whole -inf blocks before finite ones."""
    x = randn(4, 300)
    x[:, :150] = float("-inf")
    x[1, 200:] = float("-inf")
    assert_close(softmax(x, block_size=block_size), softmax_reference(x), torch.float32)


@pytest.mark.parametrize("x, kwargs, message", [
    (torch.ones(4, 8, dtype=torch.float64), {}, "float16, bfloat16 or float32"),
    (torch.ones(8, 4).t(), {}, "contiguous"),
    (torch.ones(8), dict(causal=True), "q_len"),
    (torch.ones(4, 8), dict(block_size=48), "power of two"),
    (torch.ones(4, 8), dict(scale=float("inf")), "finite"),
])
def test_softmax_rejects_bad_input(x: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        softmax(x.to(DEVICE), **kwargs)


# flash attention


def attention_inputs(batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, head_dim: int,
                     dtype: torch.dtype):
    return (randn(batch, heads, q_len, head_dim, dtype=dtype, seed=1),
            randn(batch, kv_heads, kv_len, head_dim, dtype=dtype, seed=2),
            randn(batch, kv_heads, kv_len, head_dim, dtype=dtype, seed=3))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [
    (1, 2, 2, 100, 129, 64),  # q_len < kv_len
    (1, 4, 2, 129, 100, 32),  # GQA, q_len > kv_len (causal: the first 29 queries see nothing)
    (2, 4, 1, 1, 129, 64),  # decode, one KV head
    (1, 1, 1, 129, 129, 128),
])
def test_flash_attention_matches_reference(shape: tuple[int, ...], causal: bool, dtype: torch.dtype) -> None:
    q, k, v = attention_inputs(*shape, dtype)
    out = flash_attention(q, k, v, causal=causal)
    assert out.dtype == dtype
    assert_close(out, flash_attention_reference(q, k, v, causal=causal), dtype)


PATHS = [dict(tma=True), dict(scale_q=True), dict(tma=True, scale_q=True)]
PATH_IDS = ["tma", "scale_q", "tma+scale_q"]


def small_tile(**path: bool):
    """A configuration for this device: interpreter-sized tiles on the CPU, a small Hopper tile on a GPU."""
    return flash.make_config(16, 16, 4, 1, **path) if flash.INTERPRET else flash.make_config(64, 64, 4, 2, **path)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape, dtype", [
    ((1, 2, 2, 100, 129, 64), torch.float16),  # q_len < kv_len; K/V tiles run past kv_len
    ((2, 4, 1, 37, 30, 32), torch.bfloat16),  # GQA over batch > 1: descriptor rows are batch·kv_heads
])
def test_flash_attention_paths(path: dict, causal: bool, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """The TMA and SCALE_Q paths, run through the launcher with an explicit configuration."""
    if path.get("tma") and not flash.tma_supported(DEVICE):
        pytest.skip("TMA needs a Hopper GPU and Triton >= 3.4")
    q, k, v = attention_inputs(*shape, dtype)
    out = flash._launch(q, k, v, causal, shape[-1] ** -0.5, small_tile(**path))
    assert_close(out, flash_attention_reference(q, k, v, causal=causal), dtype)


def test_tma_descriptor_needs_mergeable_heads() -> None:
    """[batch, seq, heads, d] storage viewed as [batch, heads, seq, d]: batch and heads do not merge."""
    if flash.TensorDescriptor is None:
        pytest.skip("Triton without host tensor descriptors")
    k = randn(2, 45, 2, 16, dtype=torch.float16).transpose(1, 2)
    assert flash._descriptor(k) is None
    assert flash._descriptor(k.contiguous()) is not None
    assert flash._descriptor(k[:1]) is not None  # one batch: only the head stride matters
    with pytest.raises(ValueError, match="TMA needs"):
        flash._launch(k, k, k, False, 0.25, small_tile(tma=True))


def test_tuned_configs_are_few_and_fit() -> None:
    """At most 4 candidates per case keep a cold autotune short; each must fit registers and shared memory."""
    for (head_dim, _), configs in flash.TUNED_CONFIGS.items():
        assert 1 <= len(configs) <= 4
        assert all(flash.fits(c, head_dim) for c in configs)
    assert not flash.fits(flash.make_config(128, 128, 4, 3), 128)  # 256 fp32 values per thread
    assert not flash.fits(flash.make_config(128, 128, 8, 4), 128)  # Q + 4 × (K + V) = 288 KiB
    assert flash.fits(flash.make_config(128, 128, 8, 3, tma=True), 128)  # 225 KiB


def test_flash_attention_strided_inputs_and_scale() -> None:
    """[batch, seq, heads, head_dim] tensors seen as [batch, heads, seq, head_dim] (strided views)."""
    q = randn(2, 37, 4, 16, dtype=torch.float16).transpose(1, 2)
    k = randn(2, 45, 2, 16, dtype=torch.float16, seed=2).transpose(1, 2)
    v = randn(2, 45, 2, 16, dtype=torch.float16, seed=3).transpose(1, 2)
    out = flash_attention(q, k, v, causal=True, scale=0.3)
    assert_close(out, flash_attention_reference(q, k, v, causal=True, scale=0.3), torch.float16)


@pytest.mark.parametrize("shapes, dtype, message", [
    (((1, 2, 8, 64),) * 3, torch.float32, "float16 or all bfloat16"),
    (((1, 2, 8, 48),) * 3, torch.float16, "head_dim"),
    (((1, 3, 8, 64), (1, 2, 8, 64), (1, 2, 8, 64)), torch.float16, "multiple of kv_heads"),
    (((1, 2, 8, 64), (1, 2, 8, 64), (1, 2, 9, 64)), torch.float16, "k and v"),
    (((2, 8, 64),) * 3, torch.float16, r"\[batch, heads, seq, head_dim\]"),
])
def test_flash_attention_rejects_bad_input(shapes: tuple, dtype: torch.dtype, message: str) -> None:
    q, k, v = (torch.ones(s, dtype=dtype, device=DEVICE) for s in shapes)
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v)


def test_flash_attention_rejects_strided_head_dim() -> None:
    q = torch.ones(1, 2, 64, 8, dtype=torch.float16, device=DEVICE).transpose(-1, -2)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        flash_attention(q, q, q)


# full size, on a GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_full_size_on_gpu(dtype: torch.dtype) -> None:
    x, residual, weight, bias = norm_inputs((8192, 4096), dtype)
    out, new_residual = fused_add_dropout_norm(x, residual, weight, bias, p=0.0, seed=0)
    ref_out, ref_residual = fused_add_dropout_norm_reference(x, residual, weight, bias)
    assert_close(out, ref_out, dtype)
    for n_cols in (8192, 32768):
        scores = randn(2, 2, 1024, n_cols, dtype=dtype)
        for causal in (False, True):
            assert_close(softmax(scores, 0.1, causal), softmax_reference(scores, 0.1, causal), dtype)
    for causal in (False, True):
        q, k, v = attention_inputs(1, 8, 2, 2048, 4096, 128, dtype)
        assert_close(flash_attention(q, k, v, causal), flash_attention_reference(q, k, v, causal), dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_tuned_configs_on_gpu(head_dim: int) -> None:
    """Every candidate of the autotuner, run on its own at an odd size (TMA ones where supported)."""
    q, k, v = attention_inputs(1, 8, 2, 1000, 1531, head_dim, torch.bfloat16)
    for causal in (False, True):
        ref = flash_attention_reference(q, k, v, causal)
        for config in flash.TUNED_CONFIGS[(head_dim, causal)]:
            if config.kwargs["TMA"] and not flash.tma_supported(DEVICE):
                continue
            assert_close(flash._launch(q, k, v, causal, head_dim ** -0.5, config), ref, torch.bfloat16)


# the catalog's Triton variants: the wiring (arguments, bias, causal flags) checked by each op's own check


@pytest.mark.parametrize("model", ["gpt-7b", "llama3-8b"])
@pytest.mark.parametrize("op_name", ["residual_dropout_norm", "softmax", "attention"])
def test_catalog_triton_variants_pass_their_op_checks(model: str, op_name: str) -> None:
    from roofline.config import make_config
    from roofline.ops import get_op
    from roofline.ops.base import default_check

    config = make_config(model, seq_len=24, d_model=64, n_heads=4, n_kv_heads=4 if model == "gpt-7b" else 2,
                         head_dim=16, ffn_dim=128, dtype="bf16" if op_name == "attention" else "fp32",
                         dropout_p=0.1)
    op = get_op(op_name)
    inputs = op.make_inputs(config, DEVICE, torch.Generator(device=DEVICE).manual_seed(7))
    output = op.variant("triton").build(config, inputs)()
    rows = torch.arange(config.q_len)
    check = op.check or (lambda c, i, o, r: default_check(op, c, i, o, r))
    assert check(config, inputs, output, rows) < (2e-2 if config.dtype == "bf16" else 1e-4)
