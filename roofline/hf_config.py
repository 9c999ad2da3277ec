"""Hugging Face `config.json` → BlockConfig fields: `--model` and `trace --hf` read a real model's shapes.

Pure Python (no torch, no transformers): a config.json is plain data. One reader per family, by `model_type`:

| family | model_type | block |
| --- | --- | --- |
| Llama, Mistral, Qwen2 | llama, mistral, qwen2 | RMSNorm, GQA, RoPE, SwiGLU |
| Qwen3, Gemma 3 | qwen3, gemma3_text (gemma3: its text_config) | + QK-norm (Gemma 3: GeGLU) |
| Gemma, Gemma 2 | gemma, gemma2 | RMSNorm, GQA, RoPE, GeGLU (gelu-tanh gate) |
| Mixtral, Qwen3-MoE | mixtral, qwen3_moe | a mixture of SwiGLU experts (Qwen3-MoE: + QK-norm) |
| GPT-NeoX | gpt_neox | LayerNorm, MHA, partial RoPE (rotary_pct), GELU |
| GPT-2 | gpt2 | LayerNorm, MHA, learned positions, GELU, residual dropout |

Every family is causal. A grouped-query model (fewer KV heads than query heads) gets `kv_repeat`: Hugging Face's
eager attention, the reference implementation, copies K and V to every query head (`repeat_kv`). What a block
reader leaves out, it says in `notes` (Gemma's four norms per block are counted as two; sliding windows and
logit soft-capping are not modelled).

The configs shipped in configs/models/*.json are the published config.json files of those models (their
`_name_or_path` names the model), unchanged but for that key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from roofline.errors import RooflineError

GATED_GELU = ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_python")
SILU = ("silu", "swish")


def find_config(name: str, shipped: Path) -> Path | None:
    """The config.json `name` stands for: a .json path, a folder holding config.json, a shipped configs/models
    file (`shipped`/<name>.json), or a model id ('org/model') in the local Hugging Face cache (no network).
    None when `name` is none of these forms (a preset name, say); one clear line when it is but is not there."""
    path = Path(name)
    if name.endswith(".json"):
        if not path.is_file():
            raise RooflineError(f"no Hugging Face config at {name}")
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RooflineError(f"folder {name} holds no config.json")
        return path / "config.json"
    if (shipped / f"{name}.json").is_file():
        return shipped / f"{name}.json"
    if "/" in name:
        found = cached_config(name)
        if found is None:
            raise RooflineError(f"'{name}' is neither a path nor a model in the local Hugging Face cache "
                                f"({hub_cache()}); download its config.json or give its path")
        return found
    return None


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def cached_config(model_id: str) -> Path | None:
    """config.json of `model_id` in the hub cache: the snapshot refs/main points at, else the newest one."""
    repo = hub_cache() / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = repo / "snapshots" / ref.read_text().strip() / "config.json"
        if candidate.is_file():
            return candidate
    snapshots = sorted((repo / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def read_config(path: Path) -> dict[str, object]:
    """The config.json as a dict (a multimodal config's text_config merged over it), or one clear line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RooflineError(f"cannot read Hugging Face config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RooflineError(f"{path} is not a Hugging Face config (not a JSON object)")
    if isinstance(data.get("text_config"), dict):  # Gemma 3, Llava-style: the decoder's fields live here
        data = {**data, **data["text_config"]}
    return data


def model_name(path: Path, asked: str) -> str:
    """A short name for tables and folders: the shipped file's stem, a cache snapshot's model, the folder's."""
    if path.name != "config.json":
        return path.stem
    if "snapshots" in path.parts:
        repo = path.parts[path.parts.index("snapshots") - 1]
        return repo.split("--")[-1]
    return path.parent.name or asked


def _get(data: dict[str, object], model_type: str, *keys: str, default: object = None) -> object:
    """The first of `keys` present (and not null) in the config, else `default`; missing with no default: error."""
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    if default is None:
        raise RooflineError(f"Hugging Face config of model_type '{model_type}' lacks '{keys[0]}'")
    return default


def _int(data: dict[str, object], model_type: str, *keys: str, default: int | None = None) -> int:
    value = _get(data, model_type, *keys, default=default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RooflineError(f"Hugging Face config of model_type '{model_type}': '{keys[0]}' must be an integer, "
                            f"got {value!r}")
    return value


def _activation(data: dict[str, object], model_type: str, gated: bool) -> str:
    act = str(_get(data, model_type, "hidden_activation", "hidden_act", "activation_function"))
    if gated and act in SILU:
        return "swiglu"
    if act in GATED_GELU:
        return "geglu" if gated else "gelu"
    raise RooflineError(f"Hugging Face config of model_type '{model_type}': activation '{act}' is not one this "
                        f"catalog has (silu for SwiGLU, gelu variants)")


def _llama_like(data: dict[str, object], t: str) -> dict[str, object]:
    """Llama's field names, shared by Mistral, Qwen2/3, Gemma 1/2/3, Mixtral, Qwen3-MoE."""
    d, heads = _int(data, t, "hidden_size"), _int(data, t, "num_attention_heads")
    kv_heads = _int(data, t, "num_key_value_heads", default=heads)
    return {"d_model": d, "n_heads": heads, "n_kv_heads": kv_heads,
            "head_dim": _int(data, t, "head_dim", default=d // heads),
            "ffn_dim": _int(data, t, "intermediate_size"), "activation": _activation(data, t, gated=True),
            "norm": "rmsnorm", "norm_eps": float(_get(data, t, "rms_norm_eps", default=1e-6)),  # type: ignore
            "dropout_p": 0.0, "causal": True, "rope": True, "kv_repeat": kv_heads < heads}


def _qk_norm(data: dict[str, object], t: str) -> dict[str, object]:
    return {**_llama_like(data, t), "qk_norm": True}


def _mixtral(data: dict[str, object], t: str) -> dict[str, object]:
    return {**_llama_like(data, t), "n_experts": _int(data, t, "num_local_experts"),
            "top_k": _int(data, t, "num_experts_per_tok")}


def _qwen3_moe(data: dict[str, object], t: str) -> dict[str, object]:
    return {**_qk_norm(data, t), "ffn_dim": _int(data, t, "moe_intermediate_size"),
            "n_experts": _int(data, t, "num_experts"), "top_k": _int(data, t, "num_experts_per_tok")}


def _gpt_neox(data: dict[str, object], t: str) -> dict[str, object]:
    d, heads = _int(data, t, "hidden_size"), _int(data, t, "num_attention_heads")
    fraction = _get(data, t, "rotary_pct", "partial_rotary_factor", default=1.0)
    return {"d_model": d, "n_heads": heads, "n_kv_heads": heads, "head_dim": d // heads,
            "ffn_dim": _int(data, t, "intermediate_size"), "activation": _activation(data, t, gated=False),
            "norm": "layernorm", "norm_eps": float(_get(data, t, "layer_norm_eps", default=1e-5)),  # type: ignore
            "dropout_p": float(_get(data, t, "hidden_dropout", default=0.0)),  # type: ignore[arg-type]
            "causal": True, "rope": True, "rope_fraction": float(fraction)}  # type: ignore[arg-type]


def _gpt2(data: dict[str, object], t: str) -> dict[str, object]:
    d, heads = _int(data, t, "n_embd"), _int(data, t, "n_head")
    return {"d_model": d, "n_heads": heads, "n_kv_heads": heads, "head_dim": d // heads,
            "ffn_dim": _int(data, t, "n_inner", default=4 * d), "activation": _activation(data, t, gated=False),
            "norm": "layernorm", "norm_eps": float(_get(data, t, "layer_norm_epsilon", default=1e-5)),  # type: ignore
            "dropout_p": float(_get(data, t, "resid_pdrop", default=0.0)), "causal": True}  # type: ignore[arg-type]


FAMILIES: dict[str, Callable[[dict[str, object], str], dict[str, object]]] = {
    "llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like, "gemma": _llama_like, "gemma2": _llama_like,
    "qwen3": _qk_norm, "gemma3_text": _qk_norm, "gemma3": _qk_norm,
    "mixtral": _mixtral, "qwen3_moe": _qwen3_moe, "gpt_neox": _gpt_neox, "gpt2": _gpt2,
}


def block_fields(data: dict[str, object], name: str) -> dict[str, object]:
    """The BlockConfig fields of one decoder layer of this model; unknown family or missing field: one line."""
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise RooflineError(f"Hugging Face config '{name}' has no model_type")
    reader = FAMILIES.get(model_type)
    if reader is None:
        raise RooflineError(f"unknown architecture '{model_type}' in Hugging Face config '{name}' (known: "
                            f"{', '.join(sorted(FAMILIES))})")
    return {"name": name, **reader(data, model_type)}


def notes(data: dict[str, object]) -> list[str]:
    """What the block of this config leaves out, in words (shown beside a trace or profile of it)."""
    out = []
    if str(data.get("model_type", "")).startswith("gemma"):
        out.append("Gemma normalises before and after attention and the FFN (four RMSNorms); the catalog counts two")
    if data.get("sliding_window") and data.get("use_sliding_window", True):
        out.append(f"sliding-window attention ({data['sliding_window']} tokens) is not modelled: full attention")
    if data.get("attn_logit_softcapping"):
        out.append("attention logit soft-capping is not modelled")
    if data.get("use_parallel_residual"):
        out.append("attention and FFN run in parallel off one residual (GPT-NeoX); the catalog's ops are the same")
    return out
