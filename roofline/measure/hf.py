"""Hugging Face decoder layers for `roofline trace --hf`: the model's own code, N layers, random weights, no download.

The config.json (hf_config.find_config: a path, a shipped name, a model id in the local Hugging Face cache) is
handed to transformers' AutoConfig with `--layers N` layers and a tiny vocabulary (the embedding is never used:
the step feeds `inputs_embeds`), and AutoModel builds the base model (LlamaModel, Qwen3Model, GPT2Model…) with the
asked attention implementation, its weights created on the device in the run's dtype. The model's final norm
belongs to no decoder layer and is left out (an identity); the rotary embedding and the mask, which every layer
uses, stay in the step.

Modes: prefill and train run `seq_len` new tokens without a KV cache (train: forward + backward); decode runs one
token per sequence against a DynamicCache holding `kv_len` random keys and values, cut back to that length before
every step (Hugging Face's DynamicCache copies it into a longer tensor at every token: that copy is measured).
transformers is an optional dependency (`pip install -e ".[hf]"`): imported here only.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import torch

from roofline import hf_config
from roofline.config import BlockConfig, make_config, models_dir, validate
from roofline.errors import CannotRun, RooflineError
from roofline.measure.targets import Target
from roofline.ops.base import TORCH_DTYPES

ATTN_IMPLS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
FINAL_NORMS = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f")
SCORE_BYTES = 4 + 4  # eager attention's fp32 scores and probabilities per (query, key) pair and head


def prefer_installed_kernels() -> None:
    """Import the installed PyPI package `kernels` (transformers imports it when it is installed) before a checkout's
    kernels/ folder (our Triton kernels, installed as roofline.kernels) can stand in for it: wherever the checkout is
    on sys.path (`python -m pytest`, a script run from the checkout), `from kernels import …` would find ours."""
    spec = None if "kernels" in sys.modules else importlib.util.find_spec("kernels")
    if spec is None or not spec.origin or not (Path(spec.origin).parent / "fused_add_dropout_norm.py").is_file():
        return  # none, already imported, or the installed one: nothing stands in for it
    checkout = Path(spec.origin).resolve().parent.parent
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if Path(os.path.abspath(p or ".")).resolve() != checkout]
    try:
        importlib.invalidate_caches()
        if importlib.util.find_spec("kernels") is not None:
            importlib.import_module("kernels")
    finally:
        sys.path[:] = saved


def import_transformers():  # type: ignore[no-untyped-def]
    prefer_installed_kernels()
    try:
        import transformers
    except ImportError:
        raise RooflineError("--hf needs the transformers package: pip install -e \".[hf]\" (or pip install "
                            "transformers); --module works without it") from None
    transformers.logging.set_verbosity_error()
    return transformers


def resolve(spec: str) -> Path:
    found = hf_config.find_config(spec, models_dir())
    if found is None:
        raise RooflineError(f"--hf '{spec}' is not a config.json path, a folder holding one, a model of "
                            "configs/models, or a model id ('org/name') in the local Hugging Face cache")
    return found


def block_config(path: Path, spec: str, data: dict[str, object], **shape: object) -> tuple[BlockConfig, list[str]]:
    """The catalog's block for this config (for the side-by-side with `profile`), and notes on what it leaves out.
    An architecture the catalog does not know still traces: its config then carries the shape and a note."""
    name = hf_config.model_name(path, spec)
    try:
        hf_config.block_fields(data, name)
    except RooflineError as exc:
        d, heads = data.get("hidden_size"), data.get("num_attention_heads")
        generic: dict[str, object] = {}
        if isinstance(d, int) and isinstance(heads, int) and heads > 0 and d % heads == 0:
            generic = {"d_model": d, "n_heads": heads, "n_kv_heads": heads, "head_dim": d // heads}
        config = validate(BlockConfig(name=name, **generic, **shape))  # type: ignore[arg-type]
        return config, [f"no catalog block for it ({exc}): no side-by-side with `profile`"]
    return make_config(str(path), **shape).replace(name=name), hf_config.notes(data)


def predicted_bytes(config: BlockConfig, attn_impl: str) -> tuple[int, str]:
    """A lower bound of what one layer's step allocates, and what dominates it: eager attention's scores and fp32
    probabilities (b·h·q·kv pairs of SCORE_BYTES), else the layer's widest activations (QKV, the FFN's up and
    gate halves and their product: T·(4·d + 3·d_ffn) elements)."""
    scores = config.batch * config.n_heads * config.q_len * config.kv_len * SCORE_BYTES if attn_impl == "eager" else 0
    activations = config.tokens * (4 * config.d_model + 3 * config.ffn_dim) * config.dtype_bytes
    return (scores, "its attention scores") if scores > activations else (activations, "its activations")


def build(spec: str, layers: int, attn_impl: str, config_shape: dict[str, object], device: torch.device,
          free_bytes: int, seed: int = 0) -> Target:
    """The Target of `--hf spec`: see the module docstring."""
    if attn_impl not in ATTN_IMPLS:
        raise RooflineError(f"unknown --attn-impl '{attn_impl}' (choose from {', '.join(ATTN_IMPLS)})")
    if layers < 1:
        raise RooflineError(f"--layers must be a positive integer, got {layers}")
    path = resolve(spec)
    data = hf_config.read_config(path)
    config, notes = block_config(path, spec, data, **config_shape)
    need, what = predicted_bytes(config, attn_impl)
    if need > free_bytes:
        hint = " or --attn-impl sdpa" if what == "its attention scores" else ""
        raise CannotRun(f"out of memory: {attn_impl} attention at seq {config.seq_len} would need {need / 1e9:.1f} GB "
                        f"for {what}, {free_bytes / 1e9:.1f} GB free (try a smaller --seq-len{hint})")
    transformers = import_transformers()
    hf = _hf_config(transformers, data, layers, config)
    dtype = TORCH_DTYPES[config.dtype]
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = transformers.AutoModel.from_config(hf, attn_implementation=attn_impl, dtype=dtype)
    except torch.OutOfMemoryError as exc:
        raise CannotRun(f"out of memory building {layers} layer(s) of {config.name}: {_first_line(exc)}") from None
    except (ValueError, ImportError, RuntimeError) as exc:
        raise RooflineError(f"transformers cannot build {config.name} with --attn-impl {attn_impl}: "
                            f"{_first_line(exc)}") from None
    for name in FINAL_NORMS:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            setattr(model, name, torch.nn.Identity())
    model.train(config.mode == "train")
    return _target(model, hf, config, attn_impl, layers, device, dtype, seed, notes, str(data.get("model_type")))


def _hf_config(transformers, data: dict[str, object], layers: int, config: BlockConfig):  # type: ignore
    model_type = str(data.get("model_type"))
    values = {k: v for k, v in data.items() if k not in ("model_type", "architectures", "auto_map")}
    try:
        hf = transformers.AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError) as exc:
        raise RooflineError(f"unknown architecture '{model_type}' for transformers {transformers.__version__}: "
                            f"{_first_line(exc)}") from None
    if hasattr(hf, "get_text_config"):
        hf = hf.get_text_config()
    hf.num_hidden_layers = layers
    hf.vocab_size = 128  # the embedding is never used (inputs_embeds): keep it small
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if hasattr(hf, token):
            setattr(hf, token, None)
    positions = config.seq_len + config.kv_cache_len + 1
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(hf, key, None), int) and getattr(hf, key) < positions:
            setattr(hf, key, positions)
    if hasattr(hf, "output_router_logits"):
        hf.output_router_logits = False
    return hf


def _target(model, hf, config: BlockConfig, attn_impl: str, layers: int, device: torch.device,  # type: ignore
            dtype: torch.dtype, seed: int, notes: list[str], model_type: str) -> Target:
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(config.batch, config.q_len, config.d_model, device=device, dtype=dtype, generator=gen)
    if config.mode == "train":
        x.requires_grad_(True)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kwargs: dict[str, object] = {"use_cache": False}
    before = _no_op
    if config.mode == "decode":
        cache, before = _kv_cache(config, hf, device, dtype, gen, layers)
        kwargs = {"use_cache": True, cache_arg: cache}
    return Target(name=config.name, kind="hf", call=lambda: model(inputs_embeds=x, **kwargs), root=model,
                  device=device, config=config, inputs=[x] if x.requires_grad else [], before_step=before,
                  output=lambda out: [out[0]], attn_impl=attn_impl, layers=layers, model_type=model_type,
                  notes=notes)


def _no_op() -> None:
    return None


def _kv_cache(config: BlockConfig, hf, device: torch.device, dtype: torch.dtype,  # type: ignore[no-untyped-def]
              gen: torch.Generator, layers: int):
    """A DynamicCache of kv_len random keys and values per layer, and the reset that cuts it back before a step."""
    from transformers import DynamicCache

    heads = getattr(hf, "num_key_value_heads", None) or config.n_kv_heads
    head_dim = getattr(hf, "head_dim", None) or config.head_dim
    try:
        cache = DynamicCache(config=hf)
    except TypeError:
        cache = DynamicCache()
    for layer in range(layers):
        shape = (config.batch, heads, config.kv_cache_len, head_dim)
        cache.update(torch.randn(shape, device=device, dtype=dtype, generator=gen),
                     torch.randn(shape, device=device, dtype=dtype, generator=gen), layer)

    def reset() -> None:
        extra = cache.get_seq_length() - config.kv_cache_len
        if extra > 0:
            cache.crop(-extra)

    return cache, reset


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
