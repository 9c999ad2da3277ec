"""The ceilings cache: keyed per device, corrupt entries re-measured with a warning, --force measures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from roofline.measure import ceilings
from roofline.measure.ceilings import cache_key, cache_path, get_ceilings, load_cached
from roofline.results import Ceilings, DeviceInfo

GPU = DeviceInfo(kind="cuda", name="NVIDIA H100 80GB HBM3", driver="550.54.15", max_sm_clock_mhz=1980,
                 max_mem_clock_mhz=2619, sm_count=132)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROOFLINE_CACHE_DIR", str(tmp_path))
    return tmp_path / "ceilings"


def fake_ceilings(info: DeviceInfo) -> Ceilings:
    return Ceilings(device=info.name, key=cache_key(info),
                    peak_flops={"tensor.bf16": 7.0e14, "vector.fp32": 5.0e13},
                    memory_bandwidth=3.0e12, read_bandwidth=3.1e12, write_bandwidth=2.9e12)


class FakeCalibrate:
    def __init__(self) -> None:
        self.calls: list[tuple[DeviceInfo, bool]] = []

    def __call__(self, info: DeviceInfo, quick: bool = False, **kwargs: object) -> Ceilings:
        self.calls.append((info, quick))
        return dataclasses.replace(fake_ceilings(info), quick=quick)


@pytest.fixture
def fake_calibrate(monkeypatch: pytest.MonkeyPatch) -> FakeCalibrate:
    fake = FakeCalibrate()
    monkeypatch.setattr(ceilings, "calibrate", fake)
    return fake


@pytest.mark.parametrize("change", [
    {"driver": "560.1"}, {"max_sm_clock_mhz": 1755}, {"max_mem_clock_mhz": 1593}, {"name": "H100 PCIe"},
    {"cpu_threads": 8}])
def test_key_changes_with_driver_clocks_and_name(change: dict[str, object]) -> None:
    other = dataclasses.replace(GPU, **change)
    assert cache_key(other) != cache_key(GPU)
    assert cache_path(other) != cache_path(GPU)


def test_key_ignores_what_does_not_change_the_roofs() -> None:
    assert cache_key(dataclasses.replace(GPU, warnings=["x"], memory_bandwidth=1.0)) == cache_key(GPU)


def test_cache_lives_under_roofline_cache_dir(private_cache: Path) -> None:
    assert cache_path(GPU).parent == private_cache


def test_missing_cache_is_none_without_warning() -> None:
    warnings: list[str] = []
    assert load_cached(GPU, warnings.append) is None
    assert warnings == []


def test_saved_ceilings_load_back() -> None:
    ceilings.save(fake_ceilings(GPU), cache_path(GPU))
    assert load_cached(GPU) == fake_ceilings(GPU)


def test_an_entry_of_another_driver_is_not_used() -> None:
    ceilings.save(fake_ceilings(GPU), cache_path(GPU))
    assert load_cached(dataclasses.replace(GPU, driver="560.1")) is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"device": "x"}', b"\xff\xfe not utf-8",
                                  '{"device": "x", "key": "wrong", "peak_flops": {"tensor.bf16": 1.0}}'])
def test_corrupt_cache_warns_and_is_none(text: str | bytes) -> None:
    path = cache_path(GPU)
    path.parent.mkdir(parents=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    warnings: list[str] = []
    assert load_cached(GPU, warnings.append) is None
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_corrupt_cache_is_recalibrated_and_rewritten(fake_calibrate: FakeCalibrate) -> None:
    path = cache_path(GPU)
    path.parent.mkdir(parents=True)
    path.write_text("{truncated")
    warnings: list[str] = []
    measured, from_cache = get_ceilings(GPU, warn=warnings.append)
    assert (measured, from_cache) == (fake_ceilings(GPU), False)
    assert len(fake_calibrate.calls) == 1 and len(warnings) == 1
    assert load_cached(GPU) == fake_ceilings(GPU)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_a_quick_entry_is_replaced_by_a_full_calibration(fake_calibrate: FakeCalibrate) -> None:
    get_ceilings(GPU, quick=True)
    assert get_ceilings(GPU, quick=True)[1] is True  # another quick run uses it
    measured, from_cache = get_ceilings(GPU)  # `roofline calibrate`: a full one replaces it
    assert not from_cache and not measured.quick and [q for _, q in fake_calibrate.calls] == [True, False]
    assert get_ceilings(GPU, quick=True)[1] is True  # a full entry serves quick runs


def test_a_cpu_entry_gets_only_the_missing_dtype_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = DeviceInfo(kind="cpu", name="Test CPU", cpu_threads=2)
    ceilings.save(Ceilings(device=cpu.name, key=cache_key(cpu), peak_flops={"vector.fp32": 5e10}, quick=True),
                  cache_path(cpu))
    measured_dtypes: list[str] = []

    def gemm_rate(timer: object, info: object, dtype: str, m: int, n: int, k: int) -> float:
        measured_dtypes.append(dtype)
        return 1e9

    monkeypatch.setattr(ceilings, "_probe_rate", lambda timer, info, dtype: 1e9)
    monkeypatch.setattr(ceilings, "_gemm_rate", gemm_rate)
    assert get_ceilings(cpu, quick=True, dtypes=("fp32",))[1] is True
    measured, from_cache = get_ceilings(cpu, quick=True, dtypes=("bf16",), shapes=((64, 96, 96),))
    assert not from_cache and set(measured_dtypes) == {"bf16"}
    assert measured.peak_flops == {"vector.fp32": 5e10, "tensor.bf16": 1e9}
    assert load_cached(cpu) == measured


def test_cpu_shapes_are_cut_to_the_time_budget() -> None:
    """A shape's rows are cut so one call takes ~0.1 s at the probed rate; one left with too few rows is dropped, and
    a cube too large for the budget shrinks."""
    rate = 1e9  # an emulated-bf16 CPU
    shapes = ceilings.cpu_shapes(((8192, 12288, 4096), (512, 512, 512), (64, 64, 64)), rate, budget_s=0.1)
    assert all(2 * m * n * k <= 0.1 * rate * 1.01 for m, n, k in shapes)
    assert shapes == ((368, 368, 368), (64, 64, 64))  # 12288 × 4096 would keep one row: left out
    fast = ceilings.cpu_shapes(((8192, 4096, 4096), (512, 512, 512)), 1e11, budget_s=0.1)
    assert fast == ((int(0.1 * 1e11 / (2 * 4096 * 4096)), 4096, 4096), (512, 512, 512))


def test_cache_hit_does_not_calibrate(fake_calibrate: FakeCalibrate) -> None:
    first, from_cache = get_ceilings(GPU)
    assert not from_cache and len(fake_calibrate.calls) == 1
    second, from_cache = get_ceilings(GPU)
    assert from_cache and second == first
    assert len(fake_calibrate.calls) == 1


def test_force_calibrates_even_when_cached(fake_calibrate: FakeCalibrate) -> None:
    get_ceilings(GPU)
    _, from_cache = get_ceilings(GPU, force=True)
    assert not from_cache and len(fake_calibrate.calls) == 2


def test_quick_is_passed_to_calibrate(fake_calibrate: FakeCalibrate) -> None:
    get_ceilings(GPU, quick=True)
    assert fake_calibrate.calls[0][1] is True


def test_calibrate_maps_the_best_gemm_per_dtype_to_its_roof(monkeypatch: pytest.MonkeyPatch) -> None:
    def bandwidths(c: Ceilings, timer: object, quick: bool) -> None:
        c.memory_bandwidth, c.read_bandwidth, c.write_bandwidth = 2e10, 3e10, 1e10

    rates = {"fp32": 1.0, "bf16": 10.0}
    monkeypatch.setattr(ceilings, "_probe_rate", lambda timer, info, dtype: 1e18)  # nothing needs cutting
    monkeypatch.setattr(ceilings, "_cpu_bandwidths", bandwidths)
    monkeypatch.setattr(ceilings, "_gemm_rate", lambda timer, info, dtype, m, n, k: rates[dtype] * m * n * k)
    cpu = DeviceInfo(kind="cpu", name="Test CPU", cpu_threads=2)
    measured = ceilings.calibrate(cpu)
    best = max(m * n * k for m, n, k in ceilings.CPU_GEMM_SHAPES)
    assert measured.peak_flops == {"vector.fp32": 1.0 * best, "tensor.bf16": 10.0 * best}
    assert (measured.key, measured.memory_bandwidth) == (cache_key(cpu), 2e10)
    assert set(measured.gemm_shapes) == {"fp32", "bf16"}


@pytest.mark.parametrize(("capability", "has_fp8"), [("9.0", True), ("8.9", True), ("8.0", False)])
def test_fp8_gemm_only_from_ada_on(capability: str, has_fp8: bool) -> None:
    dtypes = ceilings.gpu_gemm_dtypes(dataclasses.replace(GPU, compute_capability=capability))
    assert ("fp8" in dtypes) == has_fp8
    assert {"fp32", "tf32", "bf16", "fp16"} <= set(dtypes)


def test_cli_calibrate_uses_the_cache_unless_forced(fake_calibrate: FakeCalibrate, capsys) -> None:
    from roofline.cli import main

    assert main(["calibrate", "--device", "cpu"]) == 0
    assert main(["calibrate", "--device", "cpu"]) == 0
    assert len(fake_calibrate.calls) == 1
    assert main(["calibrate", "--device", "cpu", "--force"]) == 0
    assert len(fake_calibrate.calls) == 2
    assert "Roofs" in capsys.readouterr().out
