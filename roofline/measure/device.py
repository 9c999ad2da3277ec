"""What we run on — detected with torch and NVML (a DeviceInfo), matched to a datasheet in configs/devices/.

The datasheet gives the headline roofs. For a GPU with no datasheet entry the peaks are derived from what
NVML reports (SM count × clock × per-SM rate of the architecture; memory clock × bus width) with a warning.
The CPU has no datasheet: its roofs are always measured (ceilings.py).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
import threading
from pathlib import Path

import torch

from roofline.config import configs_dir
from roofline.errors import RooflineError
from roofline.results import Clocks, DeviceInfo

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Dense FLOP per clock per SM, by compute capability major.minor, used only for GPUs with no datasheet.
# Source: NVIDIA architecture whitepapers (A100: 1024 dense FP16 FMA/clk/SM; H100 SXM: 2048).
PER_SM_FLOP_PER_CLOCK = {
    "8.0": {"tensor.bf16": 2048, "tensor.fp16": 2048, "tensor.tf32": 1024, "vector.fp32": 128},
    "8.6": {"tensor.bf16": 1024, "tensor.fp16": 1024, "tensor.tf32": 512, "vector.fp32": 256},
    "8.9": {"tensor.fp8": 2048, "tensor.bf16": 1024, "tensor.fp16": 1024, "tensor.tf32": 512, "vector.fp32": 256},
    "9.0": {"tensor.fp8": 8192, "tensor.bf16": 4096, "tensor.fp16": 4096, "tensor.tf32": 2048, "vector.fp32": 256},
}


def load_datasheets() -> list[dict[str, object]]:
    sheets = []
    for path in sorted((configs_dir() / "devices").glob("*.toml")):
        text = path.read_text()
        data = tomllib.loads(text)
        data["file"] = path.stem
        data["source"] = next((ln.split("Source:", 1)[1].strip() for ln in text.splitlines() if "Source:" in ln), "")
        sheets.append(data)
    return sheets


def match_datasheet(gpu_name: str) -> dict[str, object] | None:
    """The datasheet whose `match` patterns fit NVML's name exactly enough (SXM vs PCIe vs NVL matter)."""
    short = gpu_name.replace("NVIDIA ", "")
    for sheet in load_datasheets():
        if any(re.search(p, short) for p in sheet["match"]):  # type: ignore[union-attr]
            return sheet
    return None


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return ""


def detect(requested: str | None = None) -> DeviceInfo:
    """The device to profile: `requested` is None (GPU if any, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return _detect_cpu()
    m = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if not m:
        raise RooflineError(f"unknown device '{requested}' (use cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise RooflineError(f"--device {requested} asked for, but no CUDA GPU is visible (use --device cpu)")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise RooflineError(f"no GPU cuda:{index}; this machine has {torch.cuda.device_count()}")
    return _detect_gpu(index)


def _detect_cpu() -> DeviceInfo:
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    mem = 0
    if Path("/proc/meminfo").is_file():
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem = int(m.group(1)) * 1024 if m else 0
    return DeviceInfo(kind="cpu", name=name, memory_bytes=mem, cpu_threads=torch.get_num_threads(),
                      llc_bytes=_last_level_cache_bytes(), torch=torch.__version__, triton=_triton_version(),
                      peaks_source="none")


def _last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 (Linux sysfs: '32768K'); 0 when unknown (the timer then flushes 64 MB)."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.fullmatch(r"(\d+)([KMG]?)", path.read_text().strip())
        if m:
            sizes.append(int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)])
    return max(sizes, default=0)


def _detect_gpu(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    info = DeviceInfo(
        kind="cuda", name=props.name, index=index, sm_count=props.multi_processor_count,
        compute_capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
        l2_bytes=getattr(props, "L2_cache_size", 0), cuda=torch.version.cuda or "", torch=torch.__version__,
        triton=_triton_version(),
    )
    _read_nvml(info, props)
    sheet = match_datasheet(info.name)
    if sheet:
        info.datasheet = str(sheet["file"])
        info.datasheet_source = str(sheet["source"])
        info.peak_flops = {k: float(v) for k, v in sheet["peak_flops"].items()}  # type: ignore[union-attr]
        info.memory_bandwidth = float(sheet["memory_bandwidth"])  # type: ignore[arg-type]
    else:
        _derive_peaks(info)
    return info


def _read_nvml(info: DeviceInfo, props: object) -> None:
    """Clocks, bus width, driver, power limit from NVML; a missing NVML is a warning, not an error."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = nvml_handle(info.index, props)
        info.max_sm_clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        info.max_mem_clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        info.memory_bus_width_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        info.theoretical_bandwidth = info.max_mem_clock_mhz * 1e6 * 2 * info.memory_bus_width_bits / 8
        info.driver = _str(pynvml.nvmlSystemGetDriverVersion())
        info.power_limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
    except Exception as exc:  # NVML absent (e.g. a container without the driver library)
        info.warnings.append(f"NVML unavailable ({exc}); clocks, bus width and throttle reasons not recorded")


def nvml_handle(index: int, props: object | None = None):
    """NVML's handle for torch's device `index` (matched by UUID, since CUDA and NVML order can differ)."""
    import pynvml

    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [s for s in visible.split(",") if s.strip().isdigit()]
    return pynvml.nvmlDeviceGetHandleByIndex(int(ids[index]) if index < len(ids) else index)


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _derive_peaks(info: DeviceInfo) -> None:
    rates = PER_SM_FLOP_PER_CLOCK.get(info.compute_capability, PER_SM_FLOP_PER_CLOCK["8.0"])
    clock_hz = info.max_sm_clock_mhz * 1e6
    info.peak_flops = {k: v * info.sm_count * clock_hz for k, v in rates.items()}
    info.memory_bandwidth = info.theoretical_bandwidth
    info.peaks_source = "derived from NVML"
    info.warnings.append(
        f"no datasheet for '{info.name}' in configs/devices: peaks derived from NVML clocks and SM count "
        "(run `roofline calibrate` for measured roofs, or add a datasheet file)")


def free_memory_bytes(info: DeviceInfo) -> int:
    """Memory an op may still allocate: free GPU memory, or MemAvailable on the CPU."""
    if info.kind == "cuda":
        free, _ = torch.cuda.mem_get_info(info.index)
        return free + torch.cuda.memory_reserved(info.index) - torch.cuda.memory_allocated(info.index)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        m = re.search(r"MemAvailable:\s+(\d+) kB", meminfo.read_text())
        if m:
            return int(m.group(1)) * 1024
    return 1 << 62


THROTTLE_REASONS = {  # NVML clocks-event reason bits that mean the GPU ran below its clocks
    0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
}


class ClockSampler:
    """NVML's SM and memory clocks and throttle reasons, read every `period_s` in a thread while a block runs:
    the clocks an op's samples actually ran at (one reading before or after says little under a power cap that
    comes and goes). Off a GPU, or without NVML, it reads nothing."""

    def __init__(self, info: DeviceInfo, period_s: float = 0.005) -> None:
        self.info, self.period_s = info, period_s
        self.readings: list[Clocks] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClockSampler:
        if self.info.kind == "cuda":
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self.info.kind == "cuda":
            self.readings.append(read_clocks(self.info, processes=False))  # one reading, however short the block

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.readings.append(read_clocks(self.info, processes=False))

    def summary(self) -> tuple[int | None, int | None, int | None, str]:
        """(median SM clock, lowest SM clock, median memory clock, throttle reasons seen), MHz."""
        sm = sorted(r.sm_clock_mhz for r in self.readings if r.sm_clock_mhz)
        mem = sorted(r.mem_clock_mhz for r in self.readings if r.mem_clock_mhz)
        reasons = sorted({why for r in self.readings for why in r.throttle.split(",") if why})
        return (sm[len(sm) // 2] if sm else None, sm[0] if sm else None, mem[len(mem) // 2] if mem else None,
                ",".join(reasons))


@functools.cache
def _nvml_handle(index: int):  # type: ignore[no-untyped-def]
    """NVML initialised once and the handle of torch's GPU `index` (looked up once: the sampler reads often)."""
    import pynvml

    pynvml.nvmlInit()
    return nvml_handle(index, torch.cuda.get_device_properties(index))


def read_clocks(info: DeviceInfo, processes: bool = True) -> Clocks:
    """Current SM/memory clocks, throttle reasons and (with `processes`) other processes on the GPU; empty on a
    CPU or without NVML."""
    if info.kind != "cuda":
        return Clocks()
    try:
        import pynvml

        handle = _nvml_handle(info.index)
        get_reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        reasons = get_reasons(handle)
        others = ([p for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid != os.getpid()]
                  if processes else None)
        return Clocks(sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                      mem_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
                      throttle=",".join(name for bit, name in THROTTLE_REASONS.items() if reasons & bit),
                      other_processes=None if others is None else len(others))
    except Exception:
        return Clocks()
