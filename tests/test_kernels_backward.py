"""Backward passes of our Triton kernels against torch autograd of the float64 references.

Without CUDA the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported) at
small odd shapes; tests marked ``gpu`` run full-size shapes on CUDA. Each test compares every gradient with
the float64 gradient of the same math, the fused norm's with the kernel's own dropout mask replayed.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from roofline.kernels import fused_add_dropout_norm_backward as norm_backward  # noqa: E402
from roofline.kernels.fused_add_dropout_norm import (  # noqa: E402
    dropout_keep_mask,
    fused_add_dropout_norm,
    fused_add_dropout_norm_reference,
)
from roofline.kernels.softmax import softmax, softmax_reference  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# relative Frobenius error of a gradient (measured under the interpreter, which truncates fp32 → bf16:
# ≤ 1e-7 fp32, ≤ 6.5e-3 bf16, ≤ 3e-4 fp16)
GRAD_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradients the launchers allocate start as NaN, so an element a kernel never writes fails the test."""
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def grad_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def assert_grad_close(got: torch.Tensor | None, want: torch.Tensor | None, dtype: torch.dtype, name: str) -> None:
    """got (the kernel's gradient, in dtype) within GRAD_TOLERANCE[dtype] of want (float64 autograd)."""
    assert (got is None) == (want is None), f"{name}: gradient is {got} where autograd's is {want}"
    if got is None:
        return
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite gradient (an element not written?)"
    err = grad_error(got, want)
    assert err <= GRAD_TOLERANCE[dtype], f"{name}: relative error {err:.2e} > {GRAD_TOLERANCE[dtype]:.0e} ({dtype})"


# softmax


def softmax_grads(shape: tuple[int, ...], dtype: torch.dtype, scale: float, causal: bool,
                  block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kernel's dx, float64 autograd's dx) for one upstream gradient dy."""
    x = randn(*shape, dtype=dtype).requires_grad_()
    dy = randn(*shape, dtype=dtype, seed=1)
    softmax(x, scale, causal, block_size=block_size).backward(dy)
    x64 = x.detach().double().requires_grad_()
    softmax_reference(x64, scale, causal).backward(dy.double())
    return x.grad, torch.nan_to_num(x64.grad)  # a row with nothing visible: torch's NaN, the kernel's 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, scale, causal, block_size", [
    ((37, 200), 1.0, False, None),  # one block, odd width
    ((37, 200), -0.7, False, 64),  # looped: 4 blocks, the last one partial
    ((2, 3, 67, 67), 0.125, True, None),  # causal, square
    ((1, 2, 37, 50), 0.5, True, 16),  # causal, looped
    ((1, 2, 50, 37), 0.5, True, None),  # q_len > kv_len: the first 13 rows see nothing
])
def test_softmax_backward_matches_autograd(shape: tuple[int, ...], scale: float, causal: bool,
                                           block_size: int | None, dtype: torch.dtype) -> None:
    dx, want = softmax_grads(shape, dtype, scale, causal, block_size)
    assert dx.dtype == dtype
    assert_grad_close(dx, want, dtype, "dx")
    if causal:
        q_len, kv_len = shape[-2:]
        masked = torch.ones(q_len, kv_len, dtype=torch.bool, device=DEVICE).triu(kv_len - q_len + 1)
        assert (dx[..., masked] == 0).all(), "a masked position got a gradient"


def test_softmax_saves_its_output() -> None:
    """The backward reads y, so y (not x) is saved, and forward values do not depend on the path."""
    x = randn(7, 100).requires_grad_()
    y = softmax(x, 0.3)
    (saved,) = y.grad_fn.saved_tensors
    assert saved.data_ptr() == y.data_ptr()
    with torch.no_grad():
        plain = softmax(x, 0.3)
    assert plain.grad_fn is None and torch.equal(plain, y)
    assert softmax(x.detach(), 0.3).grad_fn is None


# fused residual add + dropout + norm

LEAVES = ("x", "residual", "weight", "bias")


def norm_grads(shape: tuple[int, ...], dtype: torch.dtype, norm: str, bias: bool, p: float,
               outputs: tuple[str, ...] = ("out", "new_residual"), requires: tuple[str, ...] = LEAVES,
               seed: int = 5) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """{leaf: (the kernel's gradient, float64 autograd's)} for loss = Σ_outputs Σ output·random upstream grad."""
    d = shape[-1]
    leaves = {"x": randn(*shape, dtype=dtype, seed=1), "residual": randn(*shape, dtype=dtype, seed=2),
              "weight": 1.0 + 0.1 * randn(d, dtype=dtype, seed=3),
              "bias": randn(d, dtype=dtype, seed=4) if bias else None}
    upstream = {"out": randn(*shape, dtype=dtype, seed=6), "new_residual": randn(*shape, dtype=dtype, seed=7)}
    for name, t in leaves.items():
        if t is not None and name in requires:
            t.requires_grad_()
    out, new_residual = fused_add_dropout_norm(*leaves.values(), p, seed, 1e-5, norm)
    loss({"out": out, "new_residual": new_residual}, upstream, outputs).backward()
    ref_leaves = {n: t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
                  for n, t in leaves.items()}
    keep = dropout_keep_mask(shape, p, seed, DEVICE)
    out, new_residual = fused_add_dropout_norm_reference(*ref_leaves.values(), p, 1e-5, norm, keep_mask=keep)
    loss({"out": out, "new_residual": new_residual}, upstream, outputs).backward()
    return {n: (t.grad, ref_leaves[n].grad) for n, t in leaves.items() if t is not None}


def loss(values: dict[str, torch.Tensor], upstream: dict[str, torch.Tensor], outputs: tuple[str, ...]) -> torch.Tensor:
    """Σ over the chosen outputs of output·upstream, in float64 (upstream is then each output's gradient)."""
    return sum((values[o].double() * upstream[o].double()).sum() for o in outputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, norm, bias, p", [
    ((19, 200), "layernorm", True, 0.0),
    ((19, 200), "layernorm", True, 0.2),
    ((19, 200), "rmsnorm", False, 0.2),
    ((2, 3, 129), "rmsnorm", True, 0.1),  # 6 rows over 6 programs; 129 columns in four quarters of 64
])
def test_norm_backward_matches_autograd(shape: tuple[int, ...], norm: str, bias: bool, p: float,
                                        dtype: torch.dtype) -> None:
    for name, (got, want) in norm_grads(shape, dtype, norm, bias, p).items():
        assert_grad_close(got, want, dtype, name)
        assert got is None or got.dtype == dtype


@pytest.mark.parametrize("outputs, requires", [
    (("out",), LEAVES),  # d_new_residual is None
    (("new_residual",), LEAVES),  # d_out is None: no weight or bias gradient
    (("out", "new_residual"), ("weight",)),  # only d_weight
    (("out", "new_residual"), ("x", "bias")),
])
def test_norm_backward_partial_grads(outputs: tuple[str, ...], requires: tuple[str, ...]) -> None:
    for name, (got, want) in norm_grads((13, 150), torch.float32, "layernorm", True, 0.3, outputs, requires).items():
        assert_grad_close(got, want, torch.float32, name)


def test_norm_backward_float16() -> None:
    for name, (got, want) in norm_grads((11, 300), torch.float16, "layernorm", True, 0.1).items():
        assert_grad_close(got, want, torch.float16, name)


def test_keep_mask_is_the_forward_mask() -> None:
    x, residual = randn(9, 333), randn(9, 333, seed=1)
    _, new_residual = fused_add_dropout_norm(x, residual, torch.ones(333, device=DEVICE), None, 0.4, 21)
    assert torch.equal(dropout_keep_mask((9, 333), 0.4, 21, DEVICE), new_residual != residual)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_grad_path_forward(norm: str) -> None:
    """With grads the forward also saves fp32 mean/rstd; its outputs equal the forward-only path's."""
    x, residual, weight = randn(6, 100).requires_grad_(), randn(6, 100, seed=1), randn(100, seed=2)
    out, new_residual = fused_add_dropout_norm(x, residual, weight, None, 0.1, 3, 1e-5, norm)
    with torch.no_grad():
        plain = fused_add_dropout_norm(x, residual, weight, None, 0.1, 3, 1e-5, norm)
    assert plain[0].grad_fn is None and torch.equal(plain[0], out) and torch.equal(plain[1], new_residual)
    saved_residual, mean, rstd, _, _ = out.grad_fn.saved_tensors
    assert saved_residual.data_ptr() == new_residual.data_ptr()
    h = new_residual.detach().double()
    centred = h - h.mean(-1, keepdim=True) if norm == "layernorm" else h
    want_rstd = centred.pow(2).mean(-1).add(1e-5).rsqrt()
    torch.testing.assert_close(rstd.double(), want_rstd, rtol=1e-5, atol=0)
    assert (mean is None) == (norm == "rmsnorm")
    if mean is not None:
        torch.testing.assert_close(mean.double(), h.mean(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("split_rows, col_block, row_block", [
    (8, 32, 4),  # 3 splits, the last of 5 rows; 4 column blocks, the last partial: partial sums, then torch's sum
    (10, 64, 4),  # a split of 10 rows in tiles of 4: the last tile of each split is masked at the split's end
    (0, 128, 16),  # one split: the column programs write d_weight and d_bias themselves
])
@pytest.mark.parametrize("requires", [LEAVES, ("weight", "bias"), ("x", "bias")], ids=["all", "params", "x,bias"])
def test_norm_backward_launch_shapes(split_rows: int, col_block: int, row_block: int, requires: tuple[str, ...],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every split of the column sums and every interleave of column and row programs gives the same gradients."""
    monkeypatch.setattr(norm_backward, "BACKWARD_SPLIT_ROWS", split_rows)
    monkeypatch.setattr(norm_backward, "BACKWARD_COL_BLOCK", col_block)
    monkeypatch.setattr(norm_backward, "BACKWARD_ROW_BLOCK", row_block)
    for dtype in DTYPES if requires == LEAVES else [torch.float32]:  # bf16: the fp32 partials' sum, then a cast
        for name, (got, want) in norm_grads((21, 100), dtype, "layernorm", True, 0.2, requires=requires).items():
            assert_grad_close(got, want, dtype, name)
            assert got is None or got.dtype == dtype


def test_norm_backward_rmsnorm_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """RMSNorm (no saved mean) through the split column sums."""
    monkeypatch.setattr(norm_backward, "BACKWARD_SPLIT_ROWS", 16)
    for name, (got, want) in norm_grads((37, 72), torch.float32, "rmsnorm", True, 0.1).items():
        assert_grad_close(got, want, torch.float32, name)


def test_norm_backward_no_rows_and_no_upstream() -> None:
    """0 rows: zero parameter gradients; an unused output: its gradient is None, nothing read for it."""
    x = randn(0, 64).requires_grad_()
    weight, bias = randn(64, seed=1).requires_grad_(), randn(64, seed=2).requires_grad_()
    out, _ = fused_add_dropout_norm(x, torch.zeros_like(x), weight, bias, 0.1, 3)
    out.sum().backward()
    assert x.grad.shape == (0, 64) and torch.equal(weight.grad, torch.zeros(64, device=DEVICE))
    assert torch.equal(bias.grad, torch.zeros(64, device=DEVICE))


@pytest.mark.parametrize("split_rows", [8, 0])
def test_weight_grad_is_deterministic(split_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Column sums go through fixed per-split partials: the same inputs give bit-identical d_weight."""
    monkeypatch.setattr(norm_backward, "BACKWARD_SPLIT_ROWS", split_rows)
    grads = [norm_grads((29, 64), torch.float32, "layernorm", True, 0.2, requires=("weight",))["weight"][0]
             for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


# the comparison must be able to fail


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bug", ["softmax: no rowsum term", "dx: no 1/(1-p) rescale", "layernorm: no mean(g)",
                                 "last column not written"])
def test_a_wrong_gradient_fails(bug: str, dtype: torch.dtype) -> None:
    """Each plausible backward bug, applied to a correct gradient, must fail assert_grad_close at dtype's tolerance."""
    if bug.startswith("softmax"):
        x, dy = randn(37, 200).double(), randn(37, 200, seed=1).double()
        y = softmax_reference(x, 0.5)
        right, wrong = 0.5 * y * (dy - (dy * y).sum(-1, keepdim=True)), 0.5 * y * dy
    elif bug.startswith("dx"):
        right = norm_grads((13, 150), torch.float32, "layernorm", True, 0.2, requires=("x",))["x"][1]
        wrong = right * 0.8  # dh·keep instead of dh·keep/(1 − p)
    elif bug.startswith("layernorm"):
        h, g = randn(37, 200).double(), randn(37, 200, seed=1).double()
        x_hat = (h - h.mean(-1, keepdim=True)) / h.std(-1, correction=0, keepdim=True)
        mean_gx = (g * x_hat).mean(-1, keepdim=True)
        right, wrong = g - g.mean(-1, keepdim=True) - x_hat * mean_gx, g - x_hat * mean_gx
    else:
        right = softmax_grads((37, 200), torch.float32, 1.0, False, None)[1]
        wrong = right.clone()
        wrong[:, -1] = 0
    assert_grad_close(right.to(dtype), right, dtype, "right")
    with pytest.raises(AssertionError, match="relative error"):
        assert_grad_close(wrong.to(dtype), right, dtype, "wrong")


# full size, on a GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_full_size_backward_on_gpu(dtype: torch.dtype) -> None:
    for norm in ("layernorm", "rmsnorm"):
        for name, (got, want) in norm_grads((8192, 4096), dtype, norm, norm == "layernorm", 0.1).items():
            assert_grad_close(got, want, dtype, f"{norm} {name}")
    for shape, causal in [((2, 4, 1024, 8192), True), ((1, 2, 512, 32768), False), ((1, 2, 512, 32768), True)]:
        dx, want = softmax_grads(shape, dtype, 0.1, causal, None)
        # Long fp16 rows: probabilities ~1/n make gradients fp16 subnormals; PyTorch's fp16 backward loses as much
        x = randn(*shape, dtype=dtype).requires_grad_()
        softmax_reference(x, 0.1, causal).to(dtype).backward(randn(*shape, dtype=dtype, seed=1))
        torch_error = grad_error(torch.nan_to_num(x.grad), want)
        err = grad_error(dx, want)
        assert err <= max(GRAD_TOLERANCE[dtype], 1.5 * torch_error), f"{shape}: {err:.2e}, torch {torch_error:.2e}"
