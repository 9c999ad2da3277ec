"""What the commands print for the committed reference results is what tests/golden/ holds: moving code changes no
output by accident. An output meant to change is re-captured with `python tests/golden/capture.py` and its diff
read before committing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(HERE))
import capture  # noqa: E402


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    return capture.outputs()


GOLDEN = sorted(p.name for p in HERE.iterdir() if p.suffix in (".txt", ".json", ".md", ".html"))


@pytest.mark.parametrize("name", GOLDEN)
def test_output_is_unchanged(outputs: dict[str, str], name: str) -> None:
    assert outputs[name] == (HERE / name).read_text(), f"{name} changed: re-capture it if that was meant"


def test_every_capture_has_its_golden_file(outputs: dict[str, str]) -> None:
    assert sorted(outputs) == GOLDEN
