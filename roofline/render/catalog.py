"""The terminal views of what is there before anything is measured: the op catalog (`roofline ops`) and the device
with its roofs (`roofline devices`, `roofline calibrate`)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from roofline import fmt
from roofline.results import Ceilings, DeviceInfo


def catalog_table(entries: list[dict[str, object]], title: str, caption: str) -> Table:
    """One row per op (ops.describe): unit, FLOPs and bytes at the shape, intensity, variants, the formulas."""
    t = Table(title=title, header_style="bold", show_lines=True, caption=caption)
    for col in ("op", "unit", "FLOPs", "min bytes", "AI", "variants", "formulas"):
        t.add_column(col, overflow="fold")
    for e in entries:
        flops, nbytes = float(e["flops"]), float(e["min_bytes"])  # type: ignore[arg-type]
        per_block = int(e["per_block"])  # type: ignore[call-overload]
        variants = ", ".join(name + (" ⚡" if fused else "") for name, fused in e["variants"])  # type: ignore[attr-defined]
        t.add_row(f"{e['name']}" + (f" ×{per_block}" if per_block > 1 else ""), str(e["unit"]), fmt.flops(flops),
                  fmt.nbytes(nbytes) + (" bus" if e["unit"] == "comm" and e.get("group") != "pipeline" else ""),
                  fmt.intensity(flops / nbytes),
                  variants, escape(str(e["formulas"])))  # formulas hold [b, h, q, kv]: text, not rich markup
    return t


def device_table(dev: DeviceInfo) -> Table:
    """What was detected, field by field (empty ones left out)."""
    facts = Table(title=dev.name, show_header=False, title_style="bold")
    facts.add_column("field", style="bold")
    facts.add_column("value")
    for key, value in dev.to_dict().items():
        if key not in ("peak_flops", "warnings") and value not in ("", 0, 0.0, None):
            facts.add_row(key, fmt.bandwidth(value) if "bandwidth" in key else str(value))  # type: ignore[arg-type]
    return facts


def roofs_table(dev: DeviceInfo, measured: Ceilings | None) -> Table:
    """Datasheet and measured roofs side by side, with their ratio."""
    roofs = Table(title="Roofs", header_style="bold")
    for col in ("roof", "datasheet", "measured", "measured / datasheet"):
        roofs.add_column(col, justify="left" if col == "roof" else "right")
    keys = sorted(set(dev.peak_flops) | set(measured.peak_flops if measured else {}))
    for key in keys:
        ds, me = dev.peak_flops.get(key), (measured.peak_flops.get(key) if measured else None)
        roofs.add_row(key, fmt.flops_rate(ds), fmt.flops_rate(me), fmt.pct(100 * me / ds) if ds and me else "–")
    me_bw = measured.memory_bandwidth if measured else None
    roofs.add_row("memory (copy)", fmt.bandwidth(dev.memory_bandwidth or None), fmt.bandwidth(me_bw),
                  fmt.pct(100 * me_bw / dev.memory_bandwidth) if me_bw and dev.memory_bandwidth else "–")
    return roofs
