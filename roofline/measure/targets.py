"""What `roofline trace` runs: a Target — one step of a module or function over fixed inputs — from a user's
factory (`--module pkg.mod:factory`) or the Python API; Hugging Face layers are built by hf.py.

A step is the forward (no autograd: inference) or, in train mode, the forward and the backward of every output
that requires grad, against a fixed random output gradient, parameter gradients set to None before each step
(as an optimizer's zero_grad does), so every step does the same work.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_leaves

from roofline.config import BlockConfig, validate
from roofline.errors import CannotRun, RooflineError
from roofline.ops.base import TORCH_DTYPES


@dataclass
class Target:
    """One step's ingredients: the forward over its inputs, the module whose submodules name the ops."""

    name: str
    kind: str  # "hf" | "module" | "api"
    call: Callable[[], object]  # the forward over the fixed inputs
    root: torch.nn.Module | None
    device: torch.device
    config: BlockConfig
    inputs: list[torch.Tensor] = field(default_factory=list)
    before_step: Callable[[], None] = lambda: None  # decode: the KV cache back to its length
    output: Callable[[object], list[torch.Tensor]] = lambda out: tensors(out)  # what the backward starts from
    attn_impl: str = ""
    layers: int = 1
    model_type: str = ""
    notes: list[str] = field(default_factory=list)


def tensors(value: object) -> list[torch.Tensor]:
    """The tensors in a (nested) output: a tuple, a dict, a Hugging Face ModelOutput."""
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()  # type: ignore[union-attr]
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def make_step(target: Target) -> Callable[[], object]:
    """The step `trace` times and profiles (see the module docstring)."""
    if target.config.mode != "train":
        def infer() -> object:
            target.before_step()
            with torch.no_grad():
                return target.call()

        return infer
    params = list(target.root.parameters()) if target.root is not None else []
    grads: list[torch.Tensor] = []

    def train() -> object:
        target.before_step()
        for p in [*params, *target.inputs]:
            p.grad = None
        out = target.call()
        outs = [t for t in target.output(out) if t.requires_grad]
        if not outs:
            raise RooflineError(f"--mode train: no output of {target.name} requires grad (nothing to train)")
        if not grads:
            gen = torch.Generator(device=outs[0].device).manual_seed(1)
            grads.extend(torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen) for o in outs)
        torch.autograd.backward(outs, grads)
        return out

    return train


def dtype_name(dtype: torch.dtype | None, default: str = "fp32") -> str:
    return next((name for name, d in TORCH_DTYPES.items() if d == dtype and name != "tf32"), default)


# --- a user's factory: --module pkg.mod:factory ------------------------------------------------------------------

def import_factory(spec: str) -> Callable[..., object]:
    """The factory `spec` names; the working folder is searched last (so a checkout's folders never shadow an
    installed package of the same name)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RooflineError(f"--module takes pkg.module:factory, got '{spec}'")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, SyntaxError, or anything the module raises at import
        raise RooflineError(f"cannot import '{module_name}' (--module {spec}): {type(exc).__name__}: "
                            f"{_first_line(exc)}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise RooflineError(f"'{module_name}' has no function '{attr}' (--module {spec})")
    return factory  # type: ignore[no-any-return]


def from_factory(spec: str, device: torch.device, config: BlockConfig) -> Target:
    """Call the factory with the options it declares (device, dtype, seq_len, batch, mode) and check what it
    returns: (module or callable, inputs) — inputs a tuple of positional arguments, a dict of keyword ones, or
    one tensor. A factory that does not take device/dtype gets its module and floating inputs moved and cast."""
    factory = import_factory(spec)
    dtype = TORCH_DTYPES[config.dtype]
    offered = {"device": device, "dtype": dtype, "seq_len": config.seq_len, "batch": config.batch, "mode": config.mode}
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    try:
        made = factory(**kwargs)
    except torch.OutOfMemoryError as exc:
        raise CannotRun(f"out of memory in --module {spec}: {_first_line(exc)}") from None
    except Exception as exc:
        raise RooflineError(f"--module {spec} raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(made, (tuple, list)) or len(made) != 2 or not callable(made[0]):
        raise RooflineError(f"--module {spec} must return (module or callable, inputs), got {type(made).__name__}")
    fn, inputs = made
    placed = "device" in kwargs and "dtype" in kwargs
    args, call_kwargs = ((), inputs) if isinstance(inputs, dict) else \
        (tuple(inputs), {}) if isinstance(inputs, (tuple, list)) else ((inputs,), {})
    return api_target(fn, args, call_kwargs, config, spec, "module", move=None if placed else (device, dtype))


def api_target(fn: Callable[..., object], args: tuple, kwargs: dict[str, object], config: BlockConfig, name: str,
               kind: str, move: tuple[torch.device, torch.dtype] | None = None) -> Target:
    """A Target of fn(*args, **kwargs), the module's (and the floating inputs') device and dtype set by `move`."""
    root = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    root = root if isinstance(root, torch.nn.Module) else None
    if move is not None:
        device, dtype = move
        if root is not None:
            root.to(device=device, dtype=dtype)
        args, kwargs = _moved(args, device, dtype), _moved(kwargs, device, dtype)  # type: ignore[assignment]
    leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    device = leaves[0].device if leaves else next((p.device for p in (root.parameters() if root else [])),
                                                  torch.device("cpu"))
    if config.mode == "train":
        for t in leaves:
            if t.is_floating_point() and t.is_leaf:
                t.requires_grad_(True)
        if root is not None:
            root.train()
    elif root is not None:
        root.eval()
    return Target(name=name, kind=kind, call=lambda: fn(*args, **kwargs), root=root, device=device, config=config,
                  inputs=[t for t in leaves if t.is_leaf])


def api_config(name: str, mode: str, inputs: object, fn: object) -> BlockConfig:
    """The run's config for a user's module: its name, mode and dtype (of its first floating tensor)."""
    leaves = [t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    floating = next((t.dtype for t in [*leaves, *params] if t.is_floating_point()), torch.float32)
    shape = next((t.shape for t in leaves if t.dim() >= 2), None)
    batch, seq = (int(shape[0]), int(shape[1])) if shape is not None else (1, 1)
    return validate(BlockConfig(name=name, dtype=dtype_name(floating), mode=mode, batch=max(batch, 1),
                                seq_len=max(seq, 1), kv_cache_len=max(seq, 1) if mode == "decode" else 0))


def _moved(value: object, device: torch.device, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, dict):
        return {k: _moved(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device, dtype) for v in value)
    return value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
