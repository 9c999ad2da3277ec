"""The ops real blocks have beyond the textbook one — RoPE, QK-norm, the K/V copy of grouped-query attention,
GeGLU — and Hugging Face config.json files as models: each op checked against its float64 reference forward and
backward, its backward FLOPs against torch's counter where it counts them, and each family's config mapped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from roofline.analysis.placement import Roofs
from roofline.config import BlockConfig, available_models, make_config
from roofline.errors import RooflineError
from roofline.measure import variant as measure
from roofline.measure.timer import Timer
from roofline.ops import get_op, ops_for
from roofline.ops.rope import apply_rope, tables
from roofline.results import Settings

SETTINGS = Settings(budget_s=0.02, min_samples=3)
ROOFS = Roofs({}, 0.0, {"vector.fp32": 1e11}, 2e10)
QWEN_LIKE = {"qk_norm": True, "kv_repeat": True}
NEW_OPS = [("rope", {}), ("rope", {"rope_fraction": 0.25}), ("qk_norm", QWEN_LIKE), ("repeat_kv", QWEN_LIKE),
           ("geglu", {"activation": "geglu"}), ("rope", {"mode": "decode", "kv_cache_len": 41, "batch": 3})]


@pytest.mark.parametrize("mode", ["prefill", "train"])
@pytest.mark.parametrize(("name", "overrides"), NEW_OPS, ids=lambda v: str(v))
def test_each_new_op_passes_its_checks(small_config, cpu_info, name: str, overrides: dict, mode: str) -> None:
    if mode == "train" and overrides.get("mode") == "decode":
        pytest.skip("decode has no backward")
    c = small_config("llama3-8b", **{"mode": mode, **overrides})
    op = get_op(name)
    assert op.applies(c)
    for variant in op.variants:
        row = measure.measure(op, variant, c, cpu_info, ROOFS, Timer(cpu_info.torch_device), SETTINGS)
        if variant.requires(c, cpu_info.torch_device):
            assert row.status == "skipped"
            continue
        assert row.status == "ok", row.note
        assert row.error <= row.tolerance
        if mode == "train":
            assert row.grad_error is not None and row.grad_error <= row.tolerance


def test_rope_is_a_rotation_of_each_pair_by_its_position(small_config) -> None:
    """A unit vector along dim i rotates by pos·θᵢ into dim i + r/2: its norm is kept, its angle is the table's."""
    c = small_config("llama3-8b", seq_len=5, batch=1)
    cos, sin = tables(c, torch.device("cpu"), torch.float64)
    x = torch.zeros(1, 1, 5, c.head_dim, dtype=torch.float64)
    x[..., 3] = 1.0
    y = apply_rope(x, cos, sin)
    theta = 10000.0 ** (-2 * 3 / c.head_dim)
    for pos in range(5):
        assert y[0, 0, pos, 3].item() == pytest.approx(math.cos(pos * theta))
        assert y[0, 0, pos, 3 + c.head_dim // 2].item() == pytest.approx(math.sin(pos * theta))
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))


def test_partial_rope_leaves_the_other_dims_alone(small_config) -> None:
    c = small_config("llama3-8b", rope_fraction=0.25)
    assert c.rope_dim == 4
    cos, sin = tables(c, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 6, c.seq_len, c.head_dim)
    assert torch.equal(apply_rope(x, cos, sin)[..., 4:], x[..., 4:])
    assert get_op("rope").flops(c) == 3 * c.tokens * (6 + 2) * 4


def test_repeat_kv_copies_each_kv_head_to_its_group(small_config) -> None:
    from roofline.ops.attention import repeat_kv

    c = small_config("llama3-8b", **QWEN_LIKE)
    k = torch.randn(c.batch, c.n_kv_heads, 5, c.head_dim)
    out = repeat_kv(k, c)
    assert out.shape == (c.batch, c.n_heads, 5, c.head_dim)
    assert torch.equal(out[:, 3], k[:, 1]) and torch.equal(out[:, 2], k[:, 0])


@pytest.mark.parametrize(("name", "overrides"), [("repeat_kv", QWEN_LIKE)])
def test_backward_flops_of_the_copy_are_the_group_sums(small_config, name: str, overrides: dict) -> None:
    """repeat_kv's backward sums each group's gradients: (h/h_kv − 1)·b·h_kv·kv·hd adds for K and for V."""
    c = small_config("llama3-8b", mode="train", **overrides)
    assert get_op(name).backward_flops(c) == 2 * c.batch * (c.n_heads - c.n_kv_heads) * c.kv_len * c.head_dim


def test_qk_norm_and_repeat_kv_apply_only_where_the_model_has_them(small_config) -> None:
    llama = {op.name for op in ops_for(small_config("llama3-8b"))}
    qwen = {op.name for op in ops_for(small_config("llama3-8b", **QWEN_LIKE))}
    assert "rope" in llama and not {"qk_norm", "repeat_kv"} & llama
    assert {"qk_norm", "repeat_kv", "rope"} <= qwen
    assert "rope" not in {op.name for op in ops_for(small_config("gpt-7b"))}  # learned positions
    mha = small_config("gpt-7b", kv_repeat=True)  # nothing to copy when every query head has its own KV head
    assert "repeat_kv" not in {op.name for op in ops_for(mha)}


# --- Hugging Face configs as models -----------------------------------------------------------------------------

SHIPPED = {  # name: (d_model, heads, kv heads, head_dim, ffn, activation, norm, rope dims, qk_norm, experts)
    "meta-llama-3-8b": (4096, 32, 8, 128, 14336, "swiglu", "rmsnorm", 128, False, 0),
    "mistral-7b-v0.3": (4096, 32, 8, 128, 14336, "swiglu", "rmsnorm", 128, False, 0),
    "qwen2.5-7b": (3584, 28, 4, 128, 18944, "swiglu", "rmsnorm", 128, False, 0),
    "qwen3-8b": (4096, 32, 8, 128, 12288, "swiglu", "rmsnorm", 128, True, 0),
    "gemma-2-9b": (3584, 16, 8, 256, 14336, "geglu", "rmsnorm", 256, False, 0),
    "mixtral-8x7b-v0.1": (4096, 32, 8, 128, 14336, "swiglu", "rmsnorm", 128, False, 8),
    "gpt-neox-20b": (6144, 64, 64, 96, 24576, "gelu", "layernorm", 24, False, 0),
    "gpt2": (768, 12, 12, 64, 3072, "gelu", "layernorm", 0, False, 0),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_hugging_face_configs_map_to_their_blocks(name: str) -> None:
    c = make_config(name)
    shape = (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.activation, c.norm, c.rope_dim,
             c.qk_norm, c.n_experts)
    assert (c.name, shape) == (name, SHIPPED[name])
    assert c.causal and c.kv_repeat == (c.n_kv_heads < c.n_heads)


def test_at_least_five_current_models_ship_as_json() -> None:
    from roofline.config import models_dir

    shipped = {p.stem for p in models_dir().glob("*.json")}
    assert set(SHIPPED) <= shipped <= set(available_models())
    for path in models_dir().glob("*.json"):
        assert json.loads(path.read_text())["_name_or_path"]  # which published model it is


def write(tmp_path: Path, data: dict, name: str = "config.json") -> str:
    folder = tmp_path / "my-model"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(data))
    return str(folder / name)


TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 160, "hidden_act": "silu", "rms_norm_eps": 1e-6}


def test_a_config_json_path_or_its_folder_is_a_model(tmp_path: Path) -> None:
    path = write(tmp_path, TINY_LLAMA)
    by_file, by_folder = make_config(path, seq_len=32), make_config(str(Path(path).parent), seq_len=32)
    assert by_file == by_folder
    assert (by_file.name, by_file.d_model, by_file.head_dim, by_file.n_kv_heads) == ("my-model", 64, 16, 2)


def test_a_model_id_is_found_in_the_local_hugging_face_cache(tmp_path: Path, monkeypatch) -> None:
    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_LLAMA))
    (tmp_path / "hub" / "models--acme--tiny-llama" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-llama" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    c = make_config("acme/tiny-llama")
    assert (c.name, c.d_model) == ("tiny-llama", 64)
    with pytest.raises(RooflineError, match="local Hugging Face cache"):
        make_config("acme/absent")


@pytest.mark.parametrize(("change", "needle"), [
    ({"model_type": "mamba"}, "unknown architecture 'mamba'"),
    ({"model_type": None}, "no model_type"),
    ({"hidden_size": None}, "lacks 'hidden_size'"),
    ({"intermediate_size": "wide"}, "'intermediate_size' must be an integer"),
    ({"hidden_act": "relu"}, "activation 'relu'"),
])
def test_a_bad_hugging_face_config_is_one_line_naming_it(tmp_path: Path, change: dict, needle: str) -> None:
    data = {k: v for k, v in {**TINY_LLAMA, **change}.items() if v is not None}
    with pytest.raises(RooflineError, match=needle) as info:
        make_config(write(tmp_path, data))
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_a_missing_or_corrupt_config_json_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RooflineError, match="no Hugging Face config"):
        make_config(str(tmp_path / "absent.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RooflineError, match="cannot read"):
        make_config(str(tmp_path / "bad.json"))


def test_a_multimodal_config_reads_its_text_config(tmp_path: Path) -> None:
    gemma3 = {"model_type": "gemma3", "text_config": {**TINY_LLAMA, "model_type": "gemma3_text", "head_dim": 32,
                                                       "hidden_activation": "gelu_pytorch_tanh"}}
    c = make_config(write(tmp_path, gemma3))
    assert (c.head_dim, c.qk_norm, c.activation) == (32, True, "geglu")


def test_old_results_without_the_new_fields_read_as_before() -> None:
    """A results.json written before RoPE existed has no rope/qk_norm/kv_repeat: they read as False."""
    assert BlockConfig().rope is False and BlockConfig().kv_repeat is False and BlockConfig().rope_fraction == 1.0


def test_attn_v_probabilities_are_made_in_place() -> None:
    """attn_v's P is the softmax of its random scores, written over them (one N×N tensor, not two)."""
    from roofline.ops.attention import _softmax_in_place

    x = torch.randn(2, 3, 37, 41, generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(x, dim=-1)
    ptr = x.data_ptr()
    p = _softmax_in_place(x)
    assert p.data_ptr() == ptr
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_bytes", [8 * 16, 8 * 16 * 5, 1 << 20])  # 1 row, 5 rows (a ragged last slice), all
def test_times_weight_t_is_the_float64_product(chunk_bytes: int) -> None:
    from roofline.ops.base import times_weight_t

    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(7, 16, dtype=torch.float64, generator=gen), torch.randn(23, 16, generator=gen)
    torch.testing.assert_close(times_weight_t(x, w, chunk_bytes), x @ w.double().T, rtol=1e-12, atol=1e-12)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()  # a train row's check differentiates it
    times_weight_t(xg, wg, chunk_bytes).sum().backward()
    torch.testing.assert_close(wg.grad, x.sum(0).float().expand_as(w).clone(), rtol=1e-6, atol=1e-6)
