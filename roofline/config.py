"""BlockConfig: the shape of the Transformer block being profiled, from a model preset plus CLI options.

Model presets live in `configs/models/<name>.toml` (installed as package data, `roofline.configs`), beside the
Hugging Face `config.json` files of open models (`configs/models/<name>.json`, read by hf_config.py); `--model`
also takes the path of any Hugging Face config.json or a model id in the local Hugging Face cache. Every CLI
option overrides the preset. All shape maths used by the op catalog reads from here, so an op's FLOPs and bytes
formulas only see named dimensions.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from roofline.errors import RooflineError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "gpt-7b"

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
MODES = ("prefill", "decode", "train")
ACTIVATIONS = ("gelu", "swiglu", "geglu")  # geglu: gelu(gate)·up, tanh approximation (Gemma)
NORMS = ("layernorm", "rmsnorm")


@dataclass(frozen=True)
class BlockConfig:
    """One decoder block and the work given to it.

    `q_len` is the number of new tokens per sequence (seq_len in prefill, 1 in decode) and `kv_len` the
    number of keys each query attends to (seq_len in prefill, the KV-cache length in decode). Train mode has
    prefill's shapes and times each op's forward and backward.
    """

    name: str = DEFAULT_MODEL
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    ffn_dim: int = 16384
    activation: str = "gelu"
    norm: str = "layernorm"
    dropout_p: float = 0.1
    causal: bool = True
    n_experts: int = 0
    top_k: int = 0
    batch: int = 1
    seq_len: int = 2048
    kv_cache_len: int = 0
    dtype: str = "bf16"
    mode: str = "prefill"
    norm_eps: float = 1e-5
    tp: int = 1  # tensor-parallel ranks; when > 1 this config is one rank's shard (see `shard`)
    dp: int = 1  # data-parallel ranks (train mode): whole replicas, plus the gradients' all-reduce
    pp: int = 1  # pipeline stages: `layers` blocks split into pp stages of layers/pp blocks, one stage per rank
    layers: int = 1  # blocks in the model a pipeline runs (a profile's rows are one block's ops, per layer)
    microbatches: int = 1  # per pipeline step, each of `batch` sequences (Megatron's micro-batch size = batch)
    rope: bool = False  # rotary position embeddings applied to Q and K (Llama-style); False: learned positions
    rope_fraction: float = 1.0  # the share of each head's dims that RoPE rotates (GPT-NeoX: 0.25)
    qk_norm: bool = False  # RMSNorm over head_dim of Q and K before RoPE (Qwen3, Gemma 3)
    kv_repeat: bool = False  # the attention copies K and V to every query head first (Hugging Face eager's repeat_kv)

    @property
    def q_len(self) -> int:
        return 1 if self.mode == "decode" else self.seq_len

    @property
    def kv_len(self) -> int:
        return self.kv_cache_len if self.mode == "decode" else self.seq_len

    @property
    def tokens(self) -> int:
        """Rows of every token-wise op: batch × new tokens."""
        return self.batch * self.q_len

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def qkv_dim(self) -> int:
        """Output width of the fused QKV projection: query heads plus two sets of KV heads."""
        return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim

    @property
    def gated(self) -> bool:
        """A gated FFN (SwiGLU, GeGLU): the up projection makes gate and up halves, 2·d_ffn outputs."""
        return self.activation in ("swiglu", "geglu")

    @property
    def rope_dim(self) -> int:
        """Dims of each head that RoPE rotates: head_dim × rope_fraction, even (pairs rotate together)."""
        return 2 * int(self.head_dim * self.rope_fraction / 2) if self.rope else 0

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def pairs(self) -> int:
        """(query, key) pairs one head attends to: q·kv, or with a causal mask (bottom-right aligned, prefill) the
        visible ones, Σᵢ min(kv, i + kv − q + 1)."""
        q, kv = self.q_len, self.kv_len
        if not self.causal or q == 1:
            return q * kv
        return sum(min(kv, i + kv - q + 1) for i in range(q)) if q < 65536 else q * kv // 2

    @property
    def stage_layers(self) -> int:
        """Blocks one pipeline stage runs: layers / pp (validate requires pp to divide layers)."""
        return self.layers // self.pp

    @property
    def ranks(self) -> int:
        """The world a run of this config needs: tp · dp · pp ranks."""
        return self.tp * self.dp * self.pp

    @property
    def dims(self) -> dict[str, int]:
        """The named dimensions of the op catalog's formulas (ops/base.py Formula): b batch, h and h_kv query and KV
        heads, hd head dim, q and kv query and key lengths, T tokens (b·q), d d_model, d_ffn, bytes per element,
        pairs (see `pairs`), E experts, k experts per token."""
        return {"b": self.batch, "h": self.n_heads, "h_kv": self.n_kv_heads, "hd": self.head_dim, "q": self.q_len,
                "kv": self.kv_len, "T": self.tokens, "d": self.d_model, "d_ffn": self.ffn_dim,
                "bytes": self.dtype_bytes, "pairs": self.pairs, "E": self.n_experts, "k": self.top_k}

    def replace(self, **changes: object) -> BlockConfig:
        return validate(dataclasses.replace(self, **changes))

    def shard(self, tp: int) -> BlockConfig:
        """One rank's slice of this block under Megatron tensor parallelism over `tp` ranks.

        QKV and FFN-up are split by output columns, the output projection and FFN-down by input rows, so each
        rank holds n_heads/tp query heads, n_kv_heads/tp KV heads and ffn_dim/tp FFN columns: the shard is this
        config with those three divided (every op formula then counts one rank's work). d_model, the tokens and
        the norms stay whole (replicated); the all-reduces that sum the partial outputs are ops/comm.py.
        """
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise RooflineError(f"--tp must be a positive integer, got {tp!r}")
        bad = [f"{name} ({getattr(self, name)})" for name in ("n_heads", "n_kv_heads", "ffn_dim")
               if getattr(self, name) % tp]
        if bad:
            raise RooflineError(f"--tp {tp} must divide {' and '.join(bad)}")
        return self.replace(n_heads=self.n_heads // tp, n_kv_heads=self.n_kv_heads // tp,
                            ffn_dim=self.ffn_dim // tp, tp=self.tp * tp)


def configs_dir() -> Path:
    """configs/: model presets and device datasheets. Installed (`pip install .` or `-e .`) it is the package
    `roofline.configs`; run from a checkout without installing (PYTHONPATH=.) it is the checkout's folder."""
    import importlib.util

    spec = importlib.util.find_spec("roofline.configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "configs"


def models_dir() -> Path:
    return configs_dir() / "models"


def available_models() -> list[str]:
    """Presets (.toml) and shipped Hugging Face configs (.json) of configs/models, by name."""
    return sorted({p.stem for p in models_dir().glob("*.toml")} | {p.stem for p in models_dir().glob("*.json")})


def load_model(name: str) -> dict[str, object]:
    """Read `configs/models/<name>.toml` (or a path to a .toml file) into a dict of BlockConfig fields; a Hugging
    Face config (a config.json path or folder, a shipped `<name>.json`, a model id in the local Hugging Face cache)
    is mapped to them by hf_config.py."""
    from roofline import hf_config

    path = Path(name) if name.endswith(".toml") else models_dir() / f"{name}.toml"
    if not path.is_file() and not name.endswith(".toml"):
        found = hf_config.find_config(name, models_dir())
        if found is not None:
            return hf_config.block_fields(hf_config.read_config(found), hf_config.model_name(found, name))
    if not path.is_file():
        known = ", ".join(available_models())
        raise RooflineError(f"unknown model '{name}' (known: {known}, a path to a .toml file or a Hugging Face "
                            "config.json, or a model id in the local Hugging Face cache)")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RooflineError(f"cannot read model file {path}: {exc}") from exc
    fields = {f.name for f in dataclasses.fields(BlockConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise RooflineError(f"model file {path}: unknown keys {', '.join(unknown)}")
    return data


def make_config(model: str = DEFAULT_MODEL, **overrides: object) -> BlockConfig:
    """A validated BlockConfig: the model preset, then every override that is not None."""
    values = load_model(model)
    values.update({k: v for k, v in overrides.items() if v is not None})
    pp = values.get("pp", 1)
    if isinstance(pp, int) and pp > 1:  # a pipeline's defaults: 2 layers per stage, 4 microbatches per stage
        values.setdefault("layers", 2 * pp)
        values.setdefault("microbatches", 4 * pp)
    try:
        config = BlockConfig(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise RooflineError(f"bad model config '{model}': {exc}") from exc
    return validate(config)


def validate(c: BlockConfig) -> BlockConfig:
    """Reject impossible shapes with one clear line (exit code 2), before anything is allocated."""
    positive = ("d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "batch", "seq_len", "tp", "dp", "pp",
                "layers", "microbatches")
    for field in positive:
        value = getattr(c, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise RooflineError(f"{field.replace('_', '-')} must be a positive integer, got {value!r}")
    if c.dtype not in DTYPE_BYTES:
        raise RooflineError(f"unknown dtype '{c.dtype}' (choose from {', '.join(DTYPE_BYTES)})")
    if c.mode not in MODES:
        raise RooflineError(f"unknown mode '{c.mode}' (choose from {', '.join(MODES)})")
    if c.activation not in ACTIVATIONS:
        raise RooflineError(f"unknown activation '{c.activation}' (choose from {', '.join(ACTIVATIONS)})")
    if c.norm not in NORMS:
        raise RooflineError(f"unknown norm '{c.norm}' (choose from {', '.join(NORMS)})")
    if c.n_heads % c.n_kv_heads:
        raise RooflineError(f"n_heads ({c.n_heads}) must be a multiple of n_kv_heads ({c.n_kv_heads})")
    if not 0.0 <= c.dropout_p < 1.0:
        raise RooflineError(f"dropout_p must be in [0, 1), got {c.dropout_p}")
    if c.dp > 1 and c.mode != "train":
        raise RooflineError("--dp needs --mode train: data parallelism adds only the gradients' all-reduce")
    validate_pipeline(c)
    if c.mode == "train" and c.dtype == "fp8":
        raise RooflineError("train mode has no fp8 path (torch._scaled_mm has no backward); use bf16 or fp16")
    if c.mode == "decode" and c.kv_cache_len <= 0:
        raise RooflineError("decode mode needs --kv-len, the KV-cache length (a positive integer)")
    if not 0.0 < c.rope_fraction <= 1.0:
        raise RooflineError(f"rope_fraction must be in (0, 1], got {c.rope_fraction}")
    if c.n_experts and not 0 < c.top_k <= c.n_experts:
        raise RooflineError(f"top_k must be in 1..n_experts ({c.n_experts}), got {c.top_k}")
    return c


def validate_pipeline(c: BlockConfig) -> None:
    """--pp N, --layers L, --microbatches M: L blocks in N equal stages (no uneven split: every stage runs L/N
    blocks, so that one profile of a block describes every stage), M microbatches of `batch` sequences each."""
    if c.pp == 1:
        if c.layers != 1 or c.microbatches != 1:
            raise RooflineError("--layers and --microbatches describe a pipeline: they need --pp N (N ≥ 2)")
        return
    if c.pp > c.layers:
        raise RooflineError(f"--pp {c.pp} needs at least {c.pp} layers, one per stage (got --layers {c.layers})")
    if c.layers % c.pp:
        raise RooflineError(f"--layers {c.layers} must be a multiple of --pp {c.pp}: every stage runs the same "
                            "number of blocks")
    if c.mode == "decode":
        raise RooflineError("--pp runs prefill or train steps (a decode pipeline needs the KV cache per stage)")
    if c.n_experts:
        raise RooflineError("--pp needs a dense block: the pipeline's stages run the dense block (no MoE yet)")
    if c.dtype == "fp8":
        raise RooflineError("--pp has no fp8 path (the stages run plain matmuls); use bf16 or fp16")
