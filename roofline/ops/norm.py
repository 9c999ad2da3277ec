"""Memory-bound token-wise ops: LayerNorm, RMSNorm, QK-norm, dropout, residual add, and their fusion.

Each reads a [tokens, d_model] activation once and writes one back: a handful of FLOPs per element against
2–6 bytes moved, so they sit far left on the roofline and their time is bytes / bandwidth.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.ops.base import (
    CheckFailed,
    Formula,
    Inputs,
    Op,
    Variant,
    needs_cuda,
    needs_triton,
    rand,
    relative_error,
    take_rows,
)


def _x_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"x": rand((c.tokens, c.d_model), c, device, gen)}


def _norm_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {
        "x": rand((c.tokens, c.d_model), c, device, gen),
        "weight": rand((c.d_model,), c, device, gen, scale=0.5).add_(1.0),
        "bias": rand((c.d_model,), c, device, gen, scale=0.1),
    }


def layernorm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()


def _layernorm(c: BlockConfig, i: Inputs):
    x, w, b, shape = i["x"], i["weight"], i["bias"], (c.d_model,)
    return lambda: F.layer_norm(x, shape, w, b, c.norm_eps)


def _rmsnorm(c: BlockConfig, i: Inputs):
    x, w, shape = i["x"], i["weight"], (c.d_model,)
    return lambda: F.rms_norm(x, shape, w, c.norm_eps)


LAYERNORM = Op(
    name="layernorm", group="norm", unit="vector", per_block=2,
    flops=Formula("8*T*d", "mean 1, variance 3, normalise 2, affine 2 per element"),
    min_bytes=Formula("(2*T*d + 2*d)*bytes", "read x, weight, bias; write y"),
    make_inputs=_norm_inputs,
    reference=lambda c, i, rows: layernorm_reference(take_rows(i["x"], rows), i["weight"], i["bias"], c.norm_eps),
    variants=(Variant("torch", _layernorm),),
    doc="LayerNorm over d_model, before attention and before the FFN (twice per block).",
    backward_flops=Formula("13*T*d", "x̂ 2, g = dy·w 1, dw += dy·x̂ 2, db += dy 1, Σg 1, Σg·x̂ 2, dx = rstd·(g − ḡ − "
                           "x̂·mean(g·x̂)) 4 per element"),
    backward_bytes=Formula("(3*T*d + 3*d)*bytes", "read x, dy, weight; write dx, dweight, dbias; the per-row mean "
                           "and rstd are 2·T floats, not counted"),
    applies=lambda c: c.norm == "layernorm",
)

RMSNORM = Op(
    name="rmsnorm", group="norm", unit="vector", per_block=2,
    flops=Formula("4*T*d", "square 1, sum 1, scale 1, weight 1 per element"),
    min_bytes=Formula("(2*T*d + d)*bytes", "read x, weight; write y"),
    make_inputs=_norm_inputs,
    reference=lambda c, i, rows: rmsnorm_reference(take_rows(i["x"], rows), i["weight"], c.norm_eps),
    variants=(Variant("torch", _rmsnorm),),
    doc="RMSNorm (Llama-style), twice per block.",
    backward_flops=Formula("9*T*d", "x̂ 1, g = dy·w 1, dw += dy·x̂ 2, Σg·x̂ 2, dx = rstd·(g − x̂·mean(g·x̂)) 3"),
    backward_bytes=Formula("(3*T*d + 2*d)*bytes", "read x, dy, weight; write dx, dweight"),
    applies=lambda c: c.norm == "rmsnorm",
)


def _qk_norm_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"q": rand((c.batch, c.n_heads, c.q_len, c.head_dim), c, device, gen),
            "k": rand((c.batch, c.n_kv_heads, c.q_len, c.head_dim), c, device, gen),
            "q_weight": rand((c.head_dim,), c, device, gen, scale=0.5).add_(1.0),
            "k_weight": rand((c.head_dim,), c, device, gen, scale=0.5).add_(1.0)}


def _qk_norm(c: BlockConfig, i: Inputs):
    q, k, qw, kw, shape = i["q"], i["k"], i["q_weight"], i["k_weight"], (c.head_dim,)
    return lambda: (F.rms_norm(q, shape, qw, c.norm_eps), F.rms_norm(k, shape, kw, c.norm_eps))


def _qk_norm_check(c: BlockConfig, i: Inputs, output: object, rows: torch.Tensor) -> float:
    q, k = output  # type: ignore[misc]
    return max(relative_error(take_rows(q, rows), rmsnorm_reference(take_rows(i["q"], rows), i["q_weight"],
                                                                    c.norm_eps)),
               relative_error(take_rows(k, rows), rmsnorm_reference(take_rows(i["k"], rows), i["k_weight"],
                                                                    c.norm_eps)))


QK_NORM = Op(
    name="qk_norm", group="norm", unit="vector",
    flops=Formula("4*T*(h + h_kv)*hd", "RMSNorm of each head of Q and K over head_dim: square, sum, scale, weight"),
    min_bytes=Formula("(2*T*(h + h_kv)*hd + 2*hd)*bytes", "read Q, K and the two weight vectors; write Q, K"),
    make_inputs=_qk_norm_inputs,
    reference=lambda c, i, rows: rmsnorm_reference(take_rows(i["q"], rows), i["q_weight"], c.norm_eps),
    check=_qk_norm_check,
    variants=(Variant("torch", _qk_norm, doc="F.rms_norm over head_dim, for Q then K"),),
    doc="QK-norm (Qwen3, Gemma 3): RMSNorm over head_dim of each query and key head, before RoPE.",
    backward_flops=Formula("9*T*(h + h_kv)*hd", "RMSNorm's backward per element (see rmsnorm)"),
    backward_bytes=Formula("(3*T*(h + h_kv)*hd + 4*hd)*bytes", "read Q, K, their gradients and the weights; write dQ, "
                           "dK and the weights' gradients"),
    applies=lambda c: c.qk_norm,
)


def _residual_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"x": rand((c.tokens, c.d_model), c, device, gen), "residual": rand((c.tokens, c.d_model), c, device, gen)}


RESIDUAL_ADD = Op(
    name="residual_add", group="norm", unit="vector", per_block=2,
    flops=Formula("T*d", "one add per element"),
    min_bytes=Formula("3*T*d*bytes", "read x and residual, write the sum"),
    make_inputs=_residual_inputs,
    reference=lambda c, i, rows: take_rows(i["x"], rows) + take_rows(i["residual"], rows),
    variants=(Variant("torch", lambda c, i: lambda: i["x"] + i["residual"]),),
    doc="The residual connection around attention and around the FFN (twice per block).",
    backward_flops=Formula("0", "both inputs get dy itself"),
    backward_bytes=Formula("0", "autograd hands the same gradient tensor on: no kernel runs"),
)


def dropout_error(x: torch.Tensor, y: torch.Tensor, p: float, valid: torch.Tensor | None = None) -> float:
    """Dropout has no deterministic reference: every element must be 0 or x/(1-p), and the keep rate 1-p.

    `valid` restricts the check to elements whose fate can be told apart (see fused_norm_error). Returns the
    relative error of the kept elements; a keep rate more than 6 standard errors away from 1-p raises CheckFailed.
    """
    if p == 0.0:
        return relative_error(y, x)
    if not torch.isfinite(y).all():
        return float("inf")
    if valid is not None:
        x, y = x[valid], y[valid]
    kept = y != 0
    keep_rate = kept.double().mean().item()
    sigma = ((1 - p) * p / y.numel()) ** 0.5
    if abs(keep_rate - (1 - p)) > 6 * sigma:
        raise CheckFailed(f"dropout keep rate {keep_rate:.5f}, expected {1 - p:.5f} ± {sigma:.1e}")
    return relative_error(y[kept], x[kept].double() / (1 - p))


def dropout_grad_error(c: BlockConfig, i: Inputs, output: object, grads: dict, dy: torch.Tensor,
                       rows: torch.Tensor) -> float:
    """dx must be dy·keep/(1-p) with the forward's own mask (kept where y ≠ 0; x = 0 tells nothing)."""
    x, y, dx = i["x"].detach(), output.detach(), grads["x"]  # type: ignore[union-attr]
    expected = dy.double() * (y != 0) / (1 - c.dropout_p)
    known = x != 0
    return relative_error(dx.double()[known], expected[known])


DROPOUT = Op(
    name="dropout", group="norm", unit="vector", per_block=2,
    flops=Formula("T*d", "one scale per element; random-number generation not counted"),
    min_bytes=Formula("2*T*d*bytes", "read x, write y; the mask stays on chip"),
    make_inputs=_x_inputs,
    reference=lambda c, i, rows: take_rows(i["x"], rows),
    check=lambda c, i, out, rows: dropout_error(take_rows(i["x"], rows), take_rows(out, rows), c.dropout_p),
    variants=(Variant("torch", lambda c, i: lambda: F.dropout(i["x"], c.dropout_p, training=True)),),
    grad_check=dropout_grad_error,
    backward_flops=Formula("T*d", "dx = dy·mask/(1−p), one multiply per element"),
    backward_bytes=Formula("2*T*d*bytes", "read dy, write dx; the mask regenerated from the RNG seed, as our fused "
                           "kernel does — PyTorch saves it, T·d more bytes"),
    doc="Dropout on the attention and FFN outputs (twice per block), p from the model config.",
    applies=lambda c: c.dropout_p > 0,  # at p = 0 (Llama, Mixtral) there is no dropout: F.dropout returns x
)


def _norm_dims(c: BlockConfig) -> dict[str, int]:
    """The norm inside the fused op: its FLOPs per element (forward, backward) and its parameter vectors."""
    layer = c.norm == "layernorm"
    return {"norm_ops": 8 if layer else 4, "norm_backward_ops": 13 if layer else 9, "norm_params": 2 if layer else 1}


def _fused_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {**_norm_inputs(c, device, gen), "residual": rand((c.tokens, c.d_model), c, device, gen)}


def residual_dropout_norm_eager(c: BlockConfig, x, residual, weight, bias):
    """The unfused chain: dropout, then residual add, then the norm: three passes over HBM."""
    new_residual = residual + F.dropout(x, c.dropout_p, training=True)
    if c.norm == "rmsnorm":
        return F.rms_norm(new_residual, (c.d_model,), weight, c.norm_eps), new_residual
    return F.layer_norm(new_residual, (c.d_model,), weight, bias, c.norm_eps), new_residual


def _eager(c: BlockConfig, i: Inputs):
    return lambda: residual_dropout_norm_eager(c, i["x"], i["residual"], i["weight"], i["bias"])


def _compiled(c: BlockConfig, i: Inputs):
    # One small graph: compile it in this process. Inductor's default pool of compile workers costs seconds
    # to start and to shut down at exit, more than this graph takes to compile (read once, at first import).
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    fn = torch.compile(residual_dropout_norm_eager, dynamic=False)
    return lambda: fn(c, i["x"], i["residual"], i["weight"], i["bias"])


def _triton(c: BlockConfig, i: Inputs):
    from roofline.kernels.fused_add_dropout_norm import fused_add_dropout_norm

    seed = [0]

    def run():
        seed[0] += 1
        bias = i["bias"] if c.norm == "layernorm" else None  # RMSNorm has no bias
        return fused_add_dropout_norm(i["x"], i["residual"], i["weight"], bias, c.dropout_p, seed[0], c.norm_eps,
                                      c.norm)

    return run


def fused_norm_error(c: BlockConfig, i: Inputs, output: object, rows: torch.Tensor) -> float:
    """out must be norm(new_residual), and new_residual − residual a valid dropout of x.

    In low precision residual + x/(1-p) rounds back to residual when x is tiny next to it, so a kept element
    would look dropped: the dropout check only counts elements with |x/(1-p)| > 4 ulp of |residual|.
    """
    out, new_residual = output  # type: ignore[misc]
    r = take_rows(new_residual, rows)
    if c.norm == "rmsnorm":
        ref = rmsnorm_reference(r, i["weight"], c.norm_eps)
    else:
        ref = layernorm_reference(r, i["weight"], i["bias"], c.norm_eps)
    norm_err = relative_error(take_rows(out, rows), ref)
    x, residual = take_rows(i["x"], rows), take_rows(i["residual"], rows)  # the checked rows, as the norm's
    eps = torch.finfo(i["residual"].dtype).eps
    valid = x.abs() / (1 - c.dropout_p) > 4 * eps * residual.abs()
    drop_err = dropout_error(x, r - residual, c.dropout_p, valid)
    return max(norm_err, drop_err)


def fused_norm_grad_error(c: BlockConfig, i: Inputs, output: object, grads: dict, dy: torch.Tensor,
                          rows: torch.Tensor) -> float:
    """Gradients of y = norm(h), h = residual + dropout(x), for dy on rows `rows` of y.

    d_residual = dh, from the float64 norm backward at the variant's own h; dweight, dbias likewise; dx = dh·keep/(1-p)
    with the forward's mask, read off h − residual where it can be told (fused_norm_error's `valid`).
    """
    out, new_residual = output  # type: ignore[misc]
    h = take_rows(new_residual.detach(), rows).requires_grad_(True)
    params = [i["weight"]] + ([i["bias"]] if c.norm == "layernorm" else [])
    if c.norm == "rmsnorm":
        ref = rmsnorm_reference(h, i["weight"], c.norm_eps)
    else:
        ref = layernorm_reference(h, i["weight"], i["bias"], c.norm_eps)
    dh, *dparams = torch.autograd.grad(ref, [h, *params], take_rows(dy, rows))
    errors = [relative_error(take_rows(grads["residual"], rows), dh)]
    errors += [relative_error(grads[n], d) for n, d in zip(("weight", "bias"), dparams, strict=False)]
    x, residual = take_rows(i["x"].detach(), rows), take_rows(i["residual"].detach(), rows)
    eps = torch.finfo(i["residual"].dtype).eps
    valid = x.abs() / (1 - c.dropout_p) > 4 * eps * residual.abs()
    keep = (take_rows(new_residual.detach(), rows) - residual) != 0
    expected_dx = dh * keep / (1 - c.dropout_p)
    errors.append(relative_error(take_rows(grads["x"], rows)[valid], expected_dx[valid]))
    return max(errors)


RESIDUAL_DROPOUT_NORM = Op(
    name="residual_dropout_norm", group="norm", unit="vector", per_block=2,
    flops=Formula("(2 + norm_ops)*T*d", "dropout's scale and the add, then the norm's norm_ops per element: 8 for "
                  "LayerNorm, 4 for RMSNorm", _norm_dims),
    min_bytes=Formula("(4*T*d + norm_params*d)*bytes", "read x, residual and the norm's norm_params vectors "
                      "(weight and bias: 2, RMSNorm's weight: 1); write y and the new residual", _norm_dims),
    make_inputs=_fused_inputs,
    reference=lambda c, i, rows: take_rows(i["x"], rows),
    check=fused_norm_error,
    variants=(
        Variant("eager", _eager),
        Variant("compile", _compiled, fused=True, requires=needs_cuda,
                doc="torch.compile (Inductor); on CPU its C++ build takes minutes, so CUDA only"),
        Variant("triton", _triton, fused=True, requires=needs_triton, doc="kernels/fused_add_dropout_norm.py"),
    ),
    replaces=("dropout", "residual_add", "layernorm", "rmsnorm"),
    doc="new_residual = residual + dropout(x); y = norm(new_residual), in one pass instead of three.",
    grad_check=fused_norm_grad_error,
    backward_flops=Formula("(2 + norm_backward_ops)*T*d", "the norm's backward, norm_backward_ops per element (13 "
                           "for LayerNorm, 9 for RMSNorm), dh += the residual stream's gradient, dx = dh·mask/(1−p); "
                           "d_residual is dh itself", _norm_dims),
    backward_bytes=Formula("(5*T*d + (norm_params + 1)*d)*bytes", "read dy, the residual stream's gradient and h; "
                           "write dx and d_residual; the norm's vectors in, their gradients out, and the weight read",
                           _norm_dims),
)

OPS = (LAYERNORM, RMSNORM, QK_NORM, DROPOUT, RESIDUAL_ADD, RESIDUAL_DROPOUT_NORM)
