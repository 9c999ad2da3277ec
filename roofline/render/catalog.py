"""The terminal views of what is there before anything is measured: the op catalog (`roofline ops`) and the device
with its roofs (`roofline devices`, `roofline calibrate`)."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from roofline import fmt
from roofline.results import Ceilings, DeviceInfo

WIDE = 150  # below this many columns, `roofline ops` lists each op as a paragraph instead of a table row


def catalog_table(entries: list[dict[str, object]], title: str, caption: str, width: int = WIDE) -> Table | Group:
    """One row per op (ops.describe): unit, FLOPs and bytes at the shape, intensity, variants, the formulas; on a
    narrow terminal one paragraph per op, so the formulas keep their lines."""
    if width < WIDE:
        return _catalog_paragraphs(entries, title, caption)
    t = Table(title=title, header_style="bold", show_lines=True, caption=caption)
    for col in ("op", "unit", "FLOPs", "min bytes", "AI", "variants", "formulas"):
        t.add_column(col, overflow="fold")
    for e in entries:
        t.add_row(*_cells(e), escape(str(e["formulas"])))  # formulas hold [b, h, q, kv]: text, not rich markup
    return t


def _cells(e: dict[str, object]) -> tuple[str, str, str, str, str, str]:
    """An op's name (×k per block), unit, FLOPs, bytes (a collective's: bus bytes), intensity and variants."""
    flops, nbytes = float(e["flops"]), float(e["min_bytes"])  # type: ignore[arg-type]
    per_block = int(e["per_block"])  # type: ignore[call-overload]
    variants = ", ".join(name + (" ⚡" if fused else "") for name, fused in e["variants"])  # type: ignore[attr-defined]
    bus = " bus" if e["unit"] == "comm" and e.get("group") != "pipeline" else ""
    return (str(e["name"]) + (f" ×{per_block}" if per_block > 1 else ""), str(e["unit"]), fmt.flops(flops),
            fmt.nbytes(nbytes) + bus, fmt.intensity(flops / nbytes), variants)


DEVICE_FIELDS = (  # DeviceInfo field → (label, how to show it)
    ("name", "name", str), ("kind", "kind", lambda v: {"cuda": "CUDA GPU", "cpu": "CPU"}.get(v, v)),
    ("index", "index", str), ("compute_capability", "compute capability", str), ("sm_count", "SMs", str),
    ("cpu_threads", "CPU threads", str), ("memory_bytes", "memory", fmt.capacity),
    ("l2_bytes", "L2 cache", fmt.capacity),
    ("llc_bytes", "last-level cache", fmt.capacity), ("max_sm_clock_mhz", "max SM clock", lambda v: f"{v} MHz"),
    ("max_mem_clock_mhz", "max memory clock", lambda v: f"{v} MHz"),
    ("memory_bus_width_bits", "memory bus", lambda v: f"{v} bit"),
    ("theoretical_bandwidth", "memory bandwidth from the clocks", fmt.bandwidth),
    ("power_limit_w", "power limit", lambda v: f"{v:.0f} W"), ("driver", "driver", str), ("cuda", "CUDA", str),
    ("torch", "torch", str), ("triton", "triton", str), ("datasheet", "datasheet", str),
    ("datasheet_source", "datasheet source", str), ("peaks_source", "headline peaks from", str),
)


def _catalog_paragraphs(entries: list[dict[str, object]], title: str, caption: str) -> Group:
    parts: list[Text] = [Text(title, style="bold")]
    for e in entries:
        name, unit, flops, nbytes, intensity, variants = _cells(e)
        head = Text.assemble(("\n" + name, "bold"), f"  {unit} · {flops} · {nbytes} · AI {intensity}")
        parts += [head, Text(f"  variants: {variants}"), Text("  " + str(e["formulas"]).replace("\n", "\n  "))]
    return Group(*parts, Text("\n" + caption, style="dim"))


def device_table(dev: DeviceInfo) -> Table:
    """What was detected, in words and units (empty fields left out)."""
    facts = Table(title=dev.name, show_header=False, title_style="bold")
    facts.add_column("field", style="bold")
    facts.add_column("value")
    for key, label, show in DEVICE_FIELDS:
        value = getattr(dev, key)
        if value not in ("", 0, 0.0, None) and not (key == "peaks_source" and value == "none"):
            facts.add_row(label, show(value))
    return facts


def roofs_table(dev: DeviceInfo, measured: Ceilings | None) -> Table:
    """Datasheet and measured roofs side by side, with their ratio."""
    from roofline.render.figures.roofs import roof_name, roof_order

    roofs = Table(title="Roofs", header_style="bold")
    for col in ("roof", "datasheet", "measured", "measured / datasheet"):
        roofs.add_column(col, justify="left" if col == "roof" else "right")
    keys = sorted(set(dev.peak_flops) | set(measured.peak_flops if measured else {}), key=roof_order)
    for key in keys:
        ds, me = dev.peak_flops.get(key), (measured.peak_flops.get(key) if measured else None)
        roofs.add_row(roof_name(key, dev.kind), fmt.flops_rate(ds), fmt.flops_rate(me),
                      fmt.pct(100 * me / ds) if ds and me else "–")
    me_bw = measured.memory_bandwidth if measured else None
    roofs.add_row("memory (copy)", fmt.bandwidth(dev.memory_bandwidth or None), fmt.bandwidth(me_bw),
                  fmt.pct(100 * me_bw / dev.memory_bandwidth) if me_bw and dev.memory_bandwidth else "–")
    if measured and measured.l2_bandwidth:
        roofs.add_row("L2 (copy)", "–", fmt.bandwidth(measured.l2_bandwidth), "–")
    if measured and measured.quick:
        roofs.caption = "measured by a run's quick calibration (its dtype and shapes): `roofline calibrate` for all"
    return roofs
