"""Every aten op call of a traced step: what it is, where in the user's code and modules it came from, what it read
and wrote, its FLOPs — and a profiler range around each call that ties the kernels it launched to it.

A TorchDispatchMode sees each op below autograd, as it reaches the kernels (a linear arrives as t + mm). For each
call it opens `record_function("roofline::<repeat>:<index>")`, so torch.profiler's kernels (their CPU op's range)
belong to exactly one call; the first step also records the call's description (OpCall). Module paths come from
forward pre/post hooks (ModuleStack), which also push `module::<path>` ranges for trace viewers. A backward op is
tied to the forward op whose autograd node it evaluates: in the forward, a differentiable op's node takes the
sequence number before the one the dispatch mode peeks; in the backward, the node being evaluated says its own.

Bytes: each tensor argument and output counts the elements it addresses (an expanded view reads its storage, not
its broadcast size), and a storage never counts more than its size; an argument the op writes in place counts as
written (and read, unless the op overwrites it: copy_, fill_, an out= argument). Tensors are named by storage:
a fresh allocation gets a new id.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from roofline.analysis.trace import base_name
from roofline.measure import aten_flops

RANGE = "roofline::"
SKIPPED_NAMESPACES = ("profiler",)
OVERWRITES = {"copy", "fill", "zero", "index_put", "_index_put_impl", "set", "resize"}
WRAPPERS = {"wrapper", "wrapped_func", "_fn", "inner", "new_forward", "forward_with_checkpointing", "_call_impl",
            "_wrapped_call_impl", "decorate_context", "__call__", "<lambda>", "_engine_run_backward", "backward"}
_SKIP_DIRS = tuple(str(Path(p).resolve()) for p in (torch.__file__.rsplit("/", 1)[0],
                                                     Path(__file__).resolve().parent.parent,
                                                     sysconfig.get_paths()["stdlib"]))
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float8_e4m3fn: "fp8",
          torch.float8_e5m2: "fp8", torch.float64: "fp64"}
# The next autograd sequence number: a forward op's node took the one before (without it, backward calls are not
# tied to their forward op, and are attributed by their own module and caller).
_SEQUENCE_NR = getattr(torch._C._autograd, "_get_sequence_nr", None)


@dataclass
class OpCall:
    """One aten op call of the first recorded step."""

    index: int
    aten_op: str
    phase: str
    module: str
    module_class: str
    functions: list[str]
    source: str
    shapes: str
    dtype: str
    reads: dict[str, int]
    writes: dict[str, int]
    flops: float | None
    torch_flops: float | None
    flop_rule: str
    flop_note: str
    did_work: bool  # wrote a fresh or an in-place tensor (a view or a no-op did not)
    sequence_nr: int | None = None  # forward: the autograd node it created (if any)
    node_sequence_nr: int | None = None  # backward: the node it evaluates
    node: str = ""


@dataclass
class ModuleStack:
    """The module path of the code running now, kept by forward hooks on every submodule of the target."""

    names: list[tuple[str, str]] = field(default_factory=lambda: [("", "")])
    handles: list[object] = field(default_factory=list)
    ranges: list[object] = field(default_factory=list)

    def attach(self, root: torch.nn.Module) -> None:
        self.names = [("", type(root).__name__)]
        for name, module in root.named_modules():
            if not name:
                continue
            self.handles.append(module.register_forward_pre_hook(self._pre(name, type(module).__name__)))
            self.handles.append(module.register_forward_hook(self._post, always_call=True))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()  # type: ignore[attr-defined]
        self.handles.clear()

    def _pre(self, name: str, cls: str):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, args: object) -> None:
            self.names.append((name, cls))
            rf = record_function(f"module::{name}")
            rf.__enter__()
            self.ranges.append(rf)

        return hook

    def _post(self, module: torch.nn.Module, args: object, output: object) -> None:
        if len(self.names) > 1:
            self.names.pop()
        if self.ranges:
            self.ranges.pop().__exit__(None, None, None)  # type: ignore[attr-defined]

    @property
    def current(self) -> tuple[str, str]:
        return self.names[-1]


class OpRecorder(TorchDispatchMode):
    """The dispatch mode (see the module docstring). `repeat` names the ranges; only `record`ing steps describe."""

    def __init__(self, modules: ModuleStack) -> None:
        super().__init__()
        self.modules = modules
        self.calls: list[OpCall] = []
        self.repeat, self.index, self.record = 0, 0, False
        self.ids: dict[int, int] = {}  # storage address -> id of the tensor allocated there last
        self.issued = 0

    @contextmanager
    def step(self, repeat: int, record: bool) -> Iterator[None]:
        self.repeat, self.index, self.record = repeat, 0, record
        try:
            yield
        finally:
            self.record = False

    def tensor_id(self, t: torch.Tensor) -> str:
        """The id of t's storage, as last allocated ('' for a tensor without one)."""
        ptr = _ptr(t)
        if not ptr:
            return ""
        if ptr not in self.ids:
            self.allocated(ptr)
        return str(self.ids[ptr])

    def allocated(self, ptr: int) -> None:
        """A new tensor lives at ptr: a new id, never one issued before (an address comes back after a free, so
        counting addresses would hand the next new address the id of the tensor that reused an old one)."""
        self.issued += 1
        self.ids[ptr] = self.issued

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func.namespace in SKIPPED_NAMESPACES:
            return func(*args, **kwargs)
        index = self.index
        self.index += 1
        if not self.record:
            with record_function(f"{RANGE}{self.repeat}:{index}"):
                return func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        peek = _SEQUENCE_NR() if node is None and _SEQUENCE_NR is not None else None
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        input_ptrs = {_ptr(t) for t in inputs}
        for t in inputs:  # name the inputs before the call: an output may reuse a freed address
            self.tensor_id(t)
        with record_function(f"{RANGE}{self.repeat}:{index}"):
            out = func(*args, **kwargs)
        self.calls.append(self._describe(func, args, kwargs, out, index, inputs, input_ptrs, node, peek))
        return out

    def _describe(self, func, args, kwargs, out, index, inputs, input_ptrs, node, peek) -> OpCall:  # type: ignore
        name = func.name()
        named = aten_flops.bind(func, args, kwargs)
        written_args = _written_args(func, named)
        overwrite = base_name(name) in OVERWRITES
        reads: dict[str, int] = {}
        writes: dict[str, int] = {}
        for arg, value in named.items():
            for t in (v for v in tree_leaves(value) if isinstance(v, torch.Tensor)):
                if arg in written_args:
                    _add(writes, self.tensor_id(t), t)
                    if overwrite or arg == "out":
                        continue
                _add(reads, self.tensor_id(t), t)
        fresh = False
        for t in (v for v in tree_leaves(out) if isinstance(v, torch.Tensor)):
            ptr = _ptr(t)
            if ptr and ptr not in input_ptrs:  # a new allocation (an address may come back after a free)
                self.allocated(ptr)
                _add(writes, self.tensor_id(t), t)
                fresh = True
        flops, torch_count, rule, note = aten_flops.count(func, args, kwargs, out)
        module, cls = self.modules.current
        functions, source = _callers()
        floating = next((t.dtype for t in inputs if t.is_floating_point()), None)
        return OpCall(index=index, aten_op=name.split(".")[0], phase="backward" if node is not None else "forward",
                      module=module, module_class=cls, functions=functions, source=source,
                      shapes=", ".join("×".join(map(str, t.shape)) or "scalar" for t in inputs[:4]),
                      dtype=DTYPES.get(floating, "") if floating is not None else "", reads=reads, writes=writes,
                      flops=flops, torch_flops=torch_count, flop_rule=rule, flop_note=note,
                      did_work=fresh or bool(written_args),
                      sequence_nr=peek - 1 if peek is not None and peek > 0 else None,
                      node_sequence_nr=node._sequence_nr() if node is not None else None,
                      node=node.name() if node is not None else "")


def _ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # a tensor without storage (meta, fake, a subclass): not counted
        return 0


def addressed_bytes(t: torch.Tensor) -> int:
    """Bytes of the elements t addresses: its numel, or fewer for a view with zero strides (an expand)."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
    return min(t.numel(), span) * t.element_size()


def _add(into: dict[str, int], key: str, t: torch.Tensor) -> None:
    if not key:
        return
    try:
        cap = t.untyped_storage().nbytes()
    except Exception:
        cap = addressed_bytes(t)
    into[key] = min(into.get(key, 0) + addressed_bytes(t), cap)


def _written_args(func: torch._ops.OpOverload, named: dict[str, object]) -> set[str]:
    """Arguments the op writes in place (self of add_, out=), from its schema's alias annotations."""
    try:
        return {a.name for a in func._schema.arguments if a.alias_info is not None and a.alias_info.is_write
                and a.name in named}
    except (AttributeError, RuntimeError):
        return set()


def _callers(limit: int = 4) -> tuple[list[str], str]:
    """The innermost Python functions of the user's code (torch, roofline, the standard library and wrappers
    skipped) as 'file_stem.function', and the innermost one's 'file:line'."""
    frame = sys._getframe(3)
    found: list[str] = []
    source = ""
    depth = 0
    while frame is not None and len(found) < limit and depth < 80:
        code = frame.f_code
        path = os.path.realpath(code.co_filename)
        if not path.startswith(_SKIP_DIRS) and code.co_name not in WRAPPERS and not path.startswith("<"):
            found.append(f"{Path(path).stem}.{code.co_name}")
            if not source:
                source = f"{Path(path).name}:{frame.f_lineno}"
        frame = frame.f_back
        depth += 1
    return found, source
