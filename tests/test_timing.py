"""The stopping rule of sample_until_stable, with a fake clock and fake sample batches, and its statistics."""

from __future__ import annotations

import math
from itertools import cycle

import pytest
import torch

from roofline.measure.timer import Timer, median_rel_error, quantile, sample_until_stable, summarize


class FakeDevice:
    """Samples drawn from a fixed pattern; the fake clock advances by the time each sample 'took'."""

    def __init__(self, pattern: list[float]) -> None:
        self.samples = cycle(pattern)
        self.now = 0.0
        self.batches: list[int] = []

    def clock(self) -> float:
        return self.now

    def run_batch(self, k: int) -> list[float]:
        self.batches.append(k)
        times = [next(self.samples) for _ in range(k)]
        self.now += sum(times)
        return times


NOISY = [1.0, 2.0, 3.0, 4.0]  # the median's relative error stays ≫ 0.5 % for thousands of samples


def sample(device: FakeDevice, budget_s: float, **kwargs: int) -> object:
    return sample_until_stable(device.run_batch, budget_s, clock=device.clock, **kwargs)


@pytest.mark.parametrize("min_samples", [3, 7])
def test_identical_samples_converge_right_after_min_samples(min_samples: int) -> None:
    device = FakeDevice([2e-3])
    stats = sample(device, budget_s=100.0, min_samples=min_samples)
    assert (stats.stop_reason, stats.samples) == ("converged", min_samples)
    assert (stats.median_s, stats.rel_err) == (2e-3, 0.0)
    assert device.batches == [min_samples]


def test_one_outlier_does_not_stop_convergence() -> None:
    stats = sample(FakeDevice([1.0] * 9 + [50.0]), budget_s=1e6, min_samples=10)
    assert (stats.stop_reason, stats.samples, stats.median_s) == ("converged", 10, 1.0)


def test_noisy_samples_stop_on_the_budget() -> None:
    device = FakeDevice(NOISY)
    stats = sample(device, budget_s=50.0, min_samples=5)
    assert stats.stop_reason == "budget"
    assert device.now >= 50.0
    assert device.now <= 50.0 + 4.0 * 5  # it stops soon after: the last batch was sized to what was left
    assert stats.samples == sum(device.batches) and stats.samples > 5


def test_max_samples_is_respected() -> None:
    device = FakeDevice(NOISY)
    stats = sample(device, budget_s=1e9, min_samples=5, max_samples=23)
    assert (stats.stop_reason, stats.samples) == ("max_samples", 23)


def test_min_samples_are_taken_even_past_the_budget() -> None:
    device = FakeDevice([10.0, 30.0])
    stats = sample(device, budget_s=1.0, min_samples=6)
    assert (stats.stop_reason, stats.samples) == ("budget", 6)


def test_zero_budget_still_gives_statistics() -> None:
    stats = sample(FakeDevice(NOISY), budget_s=0.0, min_samples=4)
    assert stats.samples == 4 and math.isfinite(stats.median_s)


def test_median_rel_error_by_hand() -> None:
    # sorted 1..5: median 3, quartiles 2 and 4 (linear interpolation), IQR 2
    expected = math.sqrt(math.pi / 2) * (2 / 1.349) / math.sqrt(5) / 3
    assert median_rel_error([5.0, 1.0, 4.0, 2.0, 3.0]) == pytest.approx(expected, rel=1e-12)
    assert median_rel_error([1.0, 1.0, 1.0]) == 0.0
    assert median_rel_error([1.0, 2.0]) == math.inf


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([7.0], 0.3, 7.0),
    ([1.0, 2.0, 3.0, 4.0], 0.0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 1.0, 4.0),
    ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0], 0.2, 20.0),
    ([10.0, 20.0, 30.0], 0.75, 25.0),
])
def test_quantile(values: list[float], q: float, expected: float) -> None:
    assert quantile(values, q) == pytest.approx(expected)


def test_summarize_p20_p80_and_keeps_raw_order() -> None:
    raw = [5.0, 1.0, 4.0, 2.0, 3.0]
    stats = summarize(raw, "budget")
    # sorted 1..5: p20 at position 0.8 → 1.8, p80 at position 3.2 → 4.2
    assert (stats.median_s, stats.samples) == (3.0, 5)
    assert (stats.p20_s, stats.p80_s) == (pytest.approx(1.8), pytest.approx(4.2))
    assert stats.samples_s == raw and stats.stop_reason == "budget"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_sleep_ahead_of_each_sample_hides_the_launch_time() -> None:
    """50 tiny kernels: launching them costs the host more than the GPU takes to run them."""
    x = torch.zeros(1024, device="cuda")

    def many_launches() -> None:
        for _ in range(50):
            x.add_(1.0)

    clock = torch.cuda.get_device_properties(0).clock_rate // 1000 or 1500
    plain = Timer(torch.device("cuda")).time(many_launches, 0.2, 10)
    blocked = Timer(torch.device("cuda"), sm_clock_mhz=clock).time(many_launches, 0.2, 10)
    assert plain.host_s is None and blocked.host_s > blocked.median_s
    assert blocked.median_s < 0.8 * plain.median_s


@pytest.mark.parametrize(("first_s", "samples"), [(0.3, 2), (0.15, 3), (0.05, 3)])
def test_a_cpu_call_longer_than_its_budget_takes_two_samples(first_s: float, samples: int) -> None:
    """The first call counts as a sample from FIRST_CALL_SAMPLE_S (0.1 s); past the budget, one more call is all."""
    import time

    stats = Timer(torch.device("cpu")).time(lambda: time.sleep(0.25), budget_s=0.2, min_samples=3, first_s=first_s)
    assert stats.samples == samples


@pytest.mark.parametrize(("first_s", "calls"), [(0.2, 0), (0.05, 1)])
def test_a_cpu_op_whose_first_call_counts_is_not_warmed_up_again(first_s: float, calls: int) -> None:
    made = []
    Timer(torch.device("cpu")).warm_up(lambda: made.append(1), first_s, target_s=0.0)
    assert len(made) == calls
