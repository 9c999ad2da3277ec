"""roofline: where a Transformer block spends its time on a GPU, and why.

The command line is `roofline` (roofline.cli); the Python API is `roofline.trace`, which loads torch only when
called, so `import roofline` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from roofline.results import Results

__version__ = "0.1.0"


def trace(module_or_fn: Any, *inputs: Any, mode: str = "prefill", kwargs: dict[str, Any] | None = None,
          name: str | None = None, out: str | Path | None = None, repeats: int | None = None,
          calibrate: bool = False, seed: int = 0) -> Results:
    """Trace one step of `module_or_fn(*inputs, **kwargs)` on the roofline, kernel by kernel (`roofline trace`).

    mode: "prefill" or "decode" (a forward without autograd) or "train" (forward + backward of every output that
    requires grad). The inputs stay where and what they are: the device and dtype are theirs. Returns the
    Results (rows: one per aten op call that launched kernels, attributed to the block's ops); with `out`, they
    are saved there as results.json/.csv, for `roofline report`.
    """
    from pathlib import Path

    from roofline.measure.trace import trace_callable

    return trace_callable(module_or_fn, inputs, dict(kwargs or {}), mode, name, Path(out) if out else None, repeats,
                          calibrate, seed)
