"""BlockConfig: model presets, derived shapes, and one clear RooflineError per bad value or bad model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from roofline.config import BlockConfig, available_models, make_config
from roofline.errors import EXIT_BAD_INPUT, RooflineError


def test_gpt_7b_is_the_default_and_matches_the_dataclass_defaults() -> None:
    c = make_config()
    assert (c.name, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim) == ("gpt-7b", 4096, 32, 32, 128)
    assert c.ffn_dim == 4 * 4096
    assert (c.activation, c.norm, c.causal) == ("gelu", "layernorm", True)  # GPT is a decoder
    assert c == BlockConfig()


def test_llama3_8b_is_gqa_swiglu_rmsnorm_causal() -> None:
    c = make_config("llama3-8b")
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) == (4096, 32, 8, 128, 14336)
    assert (c.activation, c.norm, c.causal, c.dropout_p) == ("swiglu", "rmsnorm", True, 0.0)
    assert c.qkv_dim == (32 + 2 * 8) * 128


def test_mixtral_loads_with_its_experts() -> None:
    c = make_config("mixtral-8x7b")
    assert (c.n_experts, c.top_k, c.n_kv_heads) == (8, 2, 8)


def test_every_preset_file_loads() -> None:
    assert {"gpt-7b", "llama3-8b", "mixtral-8x7b"} <= set(available_models())
    for name in available_models():
        assert make_config(name).name == name


def test_prefill_and_decode_shapes() -> None:
    prefill = make_config(seq_len=37, batch=3)
    assert (prefill.q_len, prefill.kv_len, prefill.tokens) == (37, 37, 111)
    decode = make_config("llama3-8b", mode="decode", kv_cache_len=41, batch=5, dtype="fp16")
    assert (decode.q_len, decode.kv_len, decode.tokens, decode.dtype_bytes) == (1, 41, 5, 2)


def test_overrides_of_none_keep_the_preset() -> None:
    assert make_config("llama3-8b", n_kv_heads=None, causal=None).n_kv_heads == 8


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(RooflineError, match="unknown model 'nope'") as info:
        make_config("nope")
    assert "gpt-7b" in str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize(("overrides", "field"), [
    ({"seq_len": 0}, "seq_len"),
    ({"batch": -1}, "batch"),
    ({"batch": True}, "batch"),
    ({"seq_len": "abc"}, "seq_len"),
    ({"d_model": 0}, "d_model"),
    ({"dtype": "fp7"}, "dtype"),
    ({"mode": "training"}, "mode"),
    ({"mode": "train", "dtype": "fp8"}, "fp8"),
    ({"activation": "relu"}, "activation"),
    ({"norm": "batchnorm"}, "norm"),
    ({"n_heads": 6, "n_kv_heads": 4}, "n_kv_heads"),
    ({"dropout_p": 1.0}, "dropout_p"),
    ({"mode": "decode"}, "kv-len"),
])
def test_bad_values_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(RooflineError) as info:
        make_config(**overrides)
    message = str(info.value)
    assert field in message or field.replace("_", "-") in message
    assert "\n" not in message


def test_replace_validates() -> None:
    c = make_config(seq_len=37)
    assert c.replace(seq_len=41).seq_len == 41
    with pytest.raises(RooflineError, match="seq-len"):
        c.replace(seq_len=0)


def test_top_k_beyond_experts_is_rejected() -> None:
    with pytest.raises(RooflineError, match="top_k"):
        make_config("mixtral-8x7b", top_k=9)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return str(path)


def test_a_model_file_path_is_accepted(tmp_path: Path) -> None:
    c = make_config(write(tmp_path, 'name = "tiny"\nd_model = 96\nn_heads = 6\nn_kv_heads = 2\n'))
    assert (c.name, c.d_model, c.n_kv_heads, c.ffn_dim) == ("tiny", 96, 2, 16384)


@pytest.mark.parametrize(("text", "expected"), [
    ('d_model = 96\nwidth = 3\n', "unknown keys width"),
    ('d_model = = 96\n', "cannot read model file"),
    ('d_model = "wide"\n', "d-model must be a positive integer"),
])
def test_a_bad_model_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(RooflineError, match=expected) as info:
        make_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_a_missing_model_file_is_an_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(RooflineError, match="unknown model"):
        make_config(str(tmp_path / "absent.toml"))


def test_every_package_ships_in_the_wheel() -> None:
    """pyproject's package list names every package of roofline/ (and kernels/, configs/ as roofline.kernels and
    roofline.configs, with their data), so `pip install .` (not only -e) has them all."""
    import sys
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    repo = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "roofline").rglob("__init__.py")}
    assert on_disk | {"roofline.kernels", "roofline.configs"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"roofline": "roofline", "roofline.kernels": "kernels",
                                         "roofline.configs": "configs"}
    data = setuptools["package-data"]
    assert sorted(data["roofline.configs"]) == ["devices/*.toml", "models/*.json", "models/*.toml"]
    assert (repo / "roofline/render/templates/report.html.j2").is_file() and data["roofline.render.templates"]


def test_configs_are_found_where_the_package_is_installed() -> None:
    from roofline.config import configs_dir

    assert (configs_dir() / "models" / "gpt-7b.toml").is_file() and list((configs_dir() / "devices").glob("*.toml"))
