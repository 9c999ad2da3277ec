"""Mixture of experts (Mixtral-style): a router sends each token to top_k of n_experts FFNs.

Each token does top_k/n_experts of the FFN FLOPs of a dense block holding the same parameters, but every
expert that receives a token must still be read whole: at decode batch 1 two of Mixtral's eight experts
(2·3·d·d_ffn weights) are read for one token, a GEMV far left on the roofline. In prefill every expert gets
T·top_k/n_experts tokens and the expert matmuls are compute-bound again, if they run as a few large GEMMs:
the "loop" variant (one pair of matmuls per expert, Hugging Face's Mixtral) is compared with one grouped GEMM
per projection (torch._grouped_mm) and with bmm over expert batches padded to the largest.

Routing in the experts' inputs is balanced (slot j of token t goes to expert (π(t)·top_k + j) mod n_experts
for a random permutation π): each expert gets T·top_k/n_experts tokens, what a load-balancing loss aims for,
and exactly min(n_experts, T·top_k) experts are touched, so min_bytes is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.ops.base import Formula, Inputs, Op, Variant, rand, take_rows
from roofline.ops.ffn import geglu, swiglu, up_width
from roofline.results import MoeFlops


def moe(c: BlockConfig) -> bool:
    return c.n_experts > 0


def activation(c: BlockConfig, h: torch.Tensor) -> torch.Tensor:
    if c.activation == "geglu":
        return geglu(h)
    return swiglu(h) if c.activation == "swiglu" else F.gelu(h)


def touched_experts(c: BlockConfig) -> int:
    """Experts that receive at least one token under balanced routing: all of them once T·top_k ≥ n_experts."""
    return min(c.n_experts, c.tokens * c.top_k)


# --- router: logits = x·W_gateᵀ, softmax over experts, top-k, renormalised (Mixtral) ---------------------

def route(x: torch.Tensor, w_gate: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] in x's dtype, expert ids [T, k]); softmax in fp32 as Mixtral does."""
    probs = torch.softmax(F.linear(x, w_gate).float(), dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return (weights / weights.sum(-1, keepdim=True)).to(x.dtype), experts


def _router_reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
    """The top-k weights (sorted, renormalised); near-ties pick another expert but give the same weights."""
    probs = torch.softmax(take_rows(i["x"], rows) @ i["w_gate"].double().T, dim=-1)
    weights = probs.topk(c.top_k, dim=-1).values
    return weights / weights.sum(-1, keepdim=True)


MOE_ROUTER = Op(
    name="moe_router", group="ffn", unit="tensor",
    flops=Formula("2*T*d*E", "the gate matmul; like attention's softmax inside the fused op, the softmax, top-k and "
                  "renormalisation over E, ~5·T·E, are not counted"),
    min_bytes=Formula("(T*d + E*d + T*k)*bytes + 8*T*k", "read x and W_gate; write the k weights and int64 ids"),
    make_inputs=lambda c, d, g: {"x": rand((c.tokens, c.d_model), c, d, g),
                                 "w_gate": rand((c.n_experts, c.d_model), c, d, g, scale=c.d_model ** -0.5)},
    reference=_router_reference,
    variants=(Variant("torch", lambda c, i: lambda: route(i["x"], i["w_gate"], c.top_k),
                      doc="F.linear, fp32 softmax, topk, renormalise"),),
    doc="MoE router: which top_k of n_experts each token goes to, and with which weights.",
    backward_flops=Formula("4*T*d*E", "dx and dW_gate of the gate matmul; the softmax and top-k backward, ~4·T·E, "
                           "not counted"),
    backward_bytes=Formula("(2*T*d + 2*E*d + T*k)*bytes", "read the weights' gradient, x and W_gate; write dx, "
                           "dW_gate"),
    applies=moe,
)


# --- experts: y = Σ_k weight_k · FFN_{expert_k}(x) -------------------------------------------------------

def balanced_routing(c: BlockConfig, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Expert ids [T, k]: (π(t)·k + j) mod E — k distinct experts per token, T·k/E tokens per expert."""
    perm = torch.randperm(c.tokens, generator=gen, device=device)
    return (perm[:, None] * c.top_k + torch.arange(c.top_k, device=device)) % c.n_experts


def _experts_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    scores = rand((c.tokens, c.top_k), c, device, gen)
    return {"x": rand((c.tokens, c.d_model), c, device, gen),
            "weights": torch.softmax(scores.float(), dim=-1).to(scores.dtype),
            "experts": balanced_routing(c, device, gen),
            "w_up": rand((c.n_experts, up_width(c), c.d_model), c, device, gen, scale=c.d_model ** -0.5),
            "w_down": rand((c.n_experts, c.d_model, c.ffn_dim), c, device, gen, scale=c.ffn_dim ** -0.5)}


def _experts_reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
    """Float64, one expert at a time (a float64 copy of one expert's weights, never of all of them)."""
    x = take_rows(i["x"], rows)
    experts = i["experts"].index_select(0, rows.to(x.device))
    weights = i["weights"].index_select(0, rows.to(x.device)).double()
    out = torch.zeros_like(x)
    for e in experts.unique().tolist():
        row, slot = (experts == e).nonzero(as_tuple=True)
        h = activation(c, x[row] @ i["w_up"][e].double().T)
        out.index_add_(0, row, (h @ i["w_down"][e].double().T) * weights[row, slot, None])
    return out


def dispatch(experts: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The T·k slots sorted by expert: (token of each slot, its index in the flattened [T, k], tokens per expert)."""
    flat = experts.flatten()
    order = flat.argsort(stable=True)
    return order // experts.shape[1], order, torch.bincount(flat, minlength=n_experts)


def combine(x: torch.Tensor, token: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[t] = Σ over t's slots of weight · expert output (index_add: the scatter back to token order)."""
    return torch.zeros_like(x).index_add_(0, token, y * weights[:, None])


def moe_loop(c: BlockConfig, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
             w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Hugging Face Mixtral: per expert, gather its tokens and run two small matmuls (a host sync each)."""
    out = torch.zeros_like(x)
    for e in range(c.n_experts):
        token, slot = (experts == e).nonzero(as_tuple=True)
        if token.numel():
            h = activation(c, F.linear(x.index_select(0, token), w_up[e]))
            out.index_add_(0, token, F.linear(h, w_down[e]) * weights[token, slot, None])
    return out


def moe_grouped(c: BlockConfig, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
                w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One grouped GEMM per projection over the slots sorted by expert (offs = where each expert's rows end)."""
    token, order, counts = dispatch(experts, c.n_experts)
    offs = counts.cumsum(0).to(torch.int32)
    h = activation(c, torch._grouped_mm(x.index_select(0, token), w_up.transpose(1, 2), offs=offs))
    return combine(x, token, torch._grouped_mm(h, w_down.transpose(1, 2), offs=offs), weights.flatten()[order])


def moe_padded_bmm(c: BlockConfig, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
                   w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """bmm over [E, n_max, d] expert batches padded with zero rows to the busiest expert's token count."""
    token, order, counts = dispatch(experts, c.n_experts)
    expert = experts.flatten()[order]
    position = torch.arange(len(order), device=x.device) - (counts.cumsum(0) - counts)[expert]
    xs = x.new_zeros(c.n_experts, int(counts.max()), c.d_model)
    xs[expert, position] = x.index_select(0, token)
    h = activation(c, torch.bmm(xs, w_up.transpose(1, 2)))
    y = torch.bmm(h, w_down.transpose(1, 2))[expert, position]
    return combine(x, token, y, weights.flatten()[order])


def _variant(fn):
    return lambda c, i: lambda: fn(c, i["x"], i["weights"], i["experts"], i["w_up"], i["w_down"])


def needs_grouped_mm(c: BlockConfig, device: torch.device) -> str | None:
    if not hasattr(torch, "_grouped_mm"):
        return "this torch has no torch._grouped_mm (PyTorch ≥ 2.8)"
    if c.dtype != "bf16":
        return f"torch._grouped_mm takes bf16 only, not {c.dtype}"
    return None


def _expert_dims(c: BlockConfig) -> dict[str, int]:
    """An expert's up-projection width (2·d_ffn for SwiGLU) and the experts that get a token."""
    return {"up": up_width(c), "touched": touched_experts(c)}


def _scratch(c: BlockConfig) -> int:
    """Sorted inputs, up output, activation, down output: [T·k, d + up + d_ffn + d]."""
    return c.tokens * c.top_k * (2 * c.d_model + up_width(c) + c.ffn_dim) * c.dtype_bytes


MOE_EXPERTS = Op(
    name="moe_experts", group="ffn", unit="tensor",
    flops=Formula("2*T*k*(up + d_ffn)*d", "each token's k experts: up (2·d_ffn wide for SwiGLU: gate and up) and "
                  "down projections; matmuls only, as for fused attention: the activation and weighted sum, "
                  "(6·d_ffn + 2·d)·T·k, are not counted", _expert_dims),
    min_bytes=Formula("(2*T*d + T*k + touched*(up + d_ffn)*d)*bytes + 8*T*k", "read x, the routing and every expert "
                      "that gets a token, touched = min(E, T·k); write y", _expert_dims),
    make_inputs=_experts_inputs,
    reference=_experts_reference,
    variants=(
        Variant("loop", _variant(moe_loop), scratch_bytes=_scratch, doc="per expert: index_select, 2× F.linear"),
        Variant("grouped", _variant(moe_grouped), fused=True, requires=needs_grouped_mm, scratch_bytes=_scratch,
                doc="torch._grouped_mm: one grouped GEMM per projection"),
        Variant("padded_bmm", _variant(moe_padded_bmm), fused=True, scratch_bytes=_scratch,
                doc="torch.bmm over expert batches padded to the busiest expert"),
    ),
    doc="The routed tokens' expert FFNs (dispatch, expert matmuls, weighted combine), top_k per token.",
    backward_flops=Formula("4*T*k*(up + d_ffn)*d", "dx and dW of both expert matmuls: twice the forward", _expert_dims),
    backward_bytes=Formula("(3*T*d + 2*T*k + 2*touched*(up + d_ffn)*d)*bytes + 8*T*k", "read dy, x, the routing and "
                           "every touched expert; write dx, the routing weights' gradient and the experts' dW",
                           _expert_dims),
    applies=moe,
)

OPS = (MOE_ROUTER, MOE_EXPERTS)


def block_flops(c: BlockConfig) -> int:
    """FLOPs of one block: each op once (× per_block), a fused op (attention) standing for the chain it replaces."""
    from roofline.ops import ops_for

    ops = ops_for(c)
    replaced = {name for op in ops for name in op.replaces}
    return sum(op.flops(c) * op.per_block for op in ops if op.name not in replaced and op.unit != "comm")


def moe_flops(config: BlockConfig) -> MoeFlops | None:
    """FLOPs per token of a MoE block and of its dense equivalent (None for a dense block), saved in the run record.

    Dense-equivalent: the same block with one dense FFN holding all the experts' parameters (d_ffn × n_experts),
    i.e. what every token would cost if no routing skipped experts.
    """
    if not moe(config):
        return None
    dense = config.replace(n_experts=0, top_k=0, ffn_dim=config.n_experts * config.ffn_dim)
    return MoeFlops(block_flops(config) / config.tokens, block_flops(dense) / dense.tokens)
