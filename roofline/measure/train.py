"""Train mode: each op's forward and backward, measured as a training step would run them.

For one variant, with every floating-point input a leaf that requires grad (x, weights, Q/K/V, …):
- step: the forward, then `torch.autograd.grad` of every differentiable output with a fixed random output
  gradient — what a training step spends on the op (the row's timing, FLOPs and bytes are forward + backward);
- backward: the backward alone, each sample over the graph of a fresh forward run untimed just before it;
- saved bytes: the tensors autograd keeps from the forward for the backward (saved-tensor hooks, one count per
  storage), split into the op's inputs (alive anyway in a network: the previous op's output or a weight) and
  the new ones the op adds — naive attention's N×N probabilities, a dropout mask, FlashAttention's O(N)
  log-sum-exp;
- gradient check, before anything is timed: the output gradient is zero outside the sampled rows, so the
  float64 reference of those rows (base.Op.reference), differentiated, gives the exact expected gradient of
  every input; an op whose reference cannot be differentiated declares its own `grad_check`.

A variant whose outputs do not require grad (a forward-only kernel) is skipped with a note.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from roofline.config import BlockConfig
from roofline.errors import Unsupported
from roofline.ops.base import Closure, Inputs, Op, primary, relative_error, take_rows


def require_grads(inputs: Inputs) -> list[str]:
    """Make every floating-point input a leaf that requires grad; returns their names (the gradients taken)."""
    names = [name for name, t in inputs.items() if t.is_floating_point()]
    for name in names:
        inputs[name].requires_grad_(True)
    return names


def differentiable(output: object) -> list[torch.Tensor]:
    """The outputs gradients flow back from (a router's expert ids, say, are not)."""
    outs = output if isinstance(output, (tuple, list)) else (output,)
    return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]


def _gradients(outputs: list[torch.Tensor], leaves: list[torch.Tensor],
               grad_outputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(outputs, leaves, grad_outputs, allow_unused=True))


@dataclass
class TrainClosures:
    """The closures the timer runs, and what autograd saved for the backward of one forward.

    backward runs over the graph `forward` (untimed, before each sample) leaves: no `retain_graph`, which
    torch.compile's backward refuses (it donates its saved buffers).
    """

    step: Closure
    forward: Closure
    backward: Closure
    saved_bytes: int
    saved_new_bytes: int


def closures(fn: Closure, inputs: Inputs, names: list[str], gen: torch.Generator) -> TrainClosures:
    """Build the step, forward and backward closures of a variant's forward `fn` (see the module docstring)."""
    leaves = [inputs[n] for n in names]
    input_storages = {t.untyped_storage().data_ptr() for t in inputs.values()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kept = differentiable(fn())
    if not kept:
        raise Unsupported("forward-only: no backward pass (its output does not require grad)")
    grad_outputs = [torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen) for o in kept]
    del kept  # its graph holds the saved tensors
    pending: list[list[torch.Tensor]] = []

    def step() -> object:
        return _gradients(differentiable(fn()), leaves, grad_outputs)

    def forward() -> None:
        pending.append(differentiable(fn()))

    def backward() -> object:
        return _gradients(pending.pop(), leaves, grad_outputs)

    new = sum(n for ptr, n in saved.items() if ptr not in input_storages)
    return TrainClosures(step, forward, backward, sum(saved.values()), new)


def masked_grad_output(out: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random output gradient that is zero outside rows `rows` (dim -2)."""
    dy = torch.zeros_like(out)
    picked = torch.randn(dy.index_select(-2, rows.to(dy.device)).shape, generator=gen, dtype=torch.float32)
    dy.index_copy_(-2, rows.to(dy.device), picked.to(device=dy.device, dtype=dy.dtype))
    return dy


def grad_error(op: Op, config: BlockConfig, inputs: Inputs, names: list[str], output: object, rows: torch.Tensor,
               gen: torch.Generator) -> float:
    """Largest relative error of the input gradients, for an output gradient on rows `rows` only."""
    out = primary(output)
    if not out.requires_grad:
        raise Unsupported("forward-only: no backward pass (its output does not require grad)")
    dy = masked_grad_output(out, rows, gen)
    grads = dict(zip(names, _gradients([out], [inputs[n] for n in names], [dy]), strict=True))
    if op.grad_check is not None:
        return op.grad_check(config, inputs, output, grads, dy, rows)
    reference = op.reference(config, inputs, rows)
    expected = _gradients([reference], [inputs[n] for n in names], [take_rows(dy, rows)])
    return max(grads_error(grads, dict(zip(names, expected, strict=True))).values())


def grads_error(grads: dict[str, torch.Tensor | None],
                expected: dict[str, torch.Tensor | None]) -> dict[str, float]:
    """Relative error per input; an input the reference does not depend on must get no (or a zero) gradient."""
    errors = {}
    for name, want in expected.items():
        got = grads.get(name)
        if want is None:
            errors[name] = 0.0 if got is None or not got.abs().amax().item() else float("inf")
            continue
        if got is None:
            got = torch.zeros_like(want)
        errors[name] = relative_error(got, want)
    return errors
