"""`roofline trace` on the CPU: a tiny Hugging Face config and a plain module end to end, the Python API, the FLOP
fixes (grouped-query and causal attention), bytes by storage, attribution, fusion opportunities, and every bad
target as one line with exit 2 (3 when it could not run), nothing measured lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import roofline
from roofline import results
from roofline.analysis.opportunities import opportunities
from roofline.analysis.placement import Roofs
from roofline.analysis.trace import attribute, checks, groups
from roofline.cli import main
from roofline.config import BlockConfig
from roofline.measure import aten_flops, session
from roofline.measure.op_recorder import addressed_bytes
from roofline.results import Results, Row, Run, TraceOp, TraceRun

REPO = Path(__file__).resolve().parent.parent
ROOFS = Roofs({}, 0.0, {"vector.fp32": 1e11, "tensor.fp32": 1e11, "tensor.bf16": 4e11}, 2e10)
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 96, "hidden_act": "silu", "rms_norm_eps": 1e-6, "num_hidden_layers": 8,
              "vocab_size": 32000}
LLAMA_OPS = {"rmsnorm", "qkv_proj", "rope", "repeat_kv", "qk_t", "mask", "softmax", "attn_v", "out_proj",
             "residual_add", "ffn_up", "swiglu", "ffn_down"}


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Fixed roofs (no calibration; a GPU test keeps the GPU's real roofs, which its placements are checked against),
    one CPU thread (tiny ops on a busy 2-core machine), the repo as the working folder (for
    --module tests.trace_factories:…), wide tables."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(session, "load_roofs",
                            lambda info, calibrate=False, listener=None, config=None: (ROOFS, None))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("hf") / "tiny-llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_LLAMA))
    return str(path)


def trace_cli(capsys, tmp_path: Path, *args: str) -> tuple[int, str, str, Path]:
    out = tmp_path / "trace"
    code = main(["trace", "--device", "cpu", "--seq-len", "16", "--out", str(out), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def one_error_line(err: str, progress: bool = False) -> str:
    """The one error line on stderr (after the progress lines of a run that had started, with `progress`)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("USDT")]
    errors = [line for line in lines if line.startswith("roofline: error:")]
    assert "Traceback" not in err and len(errors) == 1 and (progress or len(lines) == 1), err
    assert lines[-1] == errors[0], err
    return errors[0]


# --- end to end ---------------------------------------------------------------------------------------------------

def test_a_hugging_face_layer_end_to_end(capsys, tmp_path: Path, tiny_config: str) -> None:
    code, out, err, folder = trace_cli(capsys, tmp_path, "--hf", tiny_config, "--attn-impl", "eager", "--layers", "2")
    assert code == 0, err
    res = results.load(folder)
    t = res.run.trace
    assert t is not None and (t.kind, t.attn_impl, t.layers, t.repeats) == ("hf", "eager", 2, 2)
    assert t.step_time_s and t.kernel_time_s and t.flop_counter_flops
    assert (res.run.config.name, res.run.config.n_kv_heads, res.run.config.rope) == ("tiny-llama", 2, True)
    ops = {r.op for r in res.rows}
    assert ops >= LLAMA_OPS, ops
    assert {r.trace.module for r in res.rows if r.op == "qkv_proj"} == {
        f"layers.{n}.self_attn.{p}_proj" for n in (0, 1) for p in "qkv"}
    assert all(r.status == "ok" and r.time_median_s and r.samples == 2 for r in res.rows)
    assert all(r.pct_of_roof is not None for r in res.rows if r.min_bytes > 0)
    # the eager core as Hugging Face runs it: Q·Kᵀ (bmm, then the scale), the mask added, fp32 softmax, P·V
    core = [(r.op, r.variant) for r in res.rows if r.trace.module == "layers.0.self_attn"
            and r.op in ("qk_t", "mask", "softmax", "attn_v")]
    assert core == [("qk_t", "bmm"), ("qk_t", "mul"), ("mask", "add"), ("softmax", "_softmax"), ("attn_v", "bmm")]
    for name in ("tiny-llama · eager · 2 layers", "Fusion opportunities", "FlopCounterMode", "qk_t + mask + softmax"):
        assert name in out
    for name in ("report.html", "roofline.png", "time_split.svg", "results.csv"):
        assert (folder / name).is_file()
    html = (folder / "report.html").read_text()
    assert "Where the time goes" in html and "Fusion opportunities" in html and "layers.1.mlp.down_proj" in html
    assert "layers.*.mlp.down_proj" in html  # by module, the layers folded together


def test_sdpa_training_counts_attention_as_the_catalog_does(capsys, tmp_path: Path, tiny_config: str) -> None:
    code, out, err, folder = trace_cli(capsys, tmp_path, "--hf", tiny_config, "--mode", "train", "--no-plots")
    assert code == 0, err
    res = results.load(folder)
    b, h, d, n = 1, 4, 16, 16
    forward = [r for r in res.rows if r.op == "attention" and r.trace.phase == "forward"]
    backward = [r for r in res.rows if r.op == "attention" and r.trace.phase == "backward"]
    assert len(forward) == len(backward) == 1 and forward[0].fused
    pairs = n * (n + 1) // 2  # causal: the visible half, grouped-query heads counted once per query head
    assert (forward[0].flops, backward[0].flops) == (4 * b * h * d * pairs, 8 * b * h * d * pairs)
    assert backward[0].trace.forward_index == forward[0].trace.index
    assert backward[0].trace.module == "layers.0.self_attn"  # a backward call is where its forward was
    phases = {(r.op, r.trace.phase) for r in res.rows}
    for op in ("qkv_proj", "rmsnorm", "ffn_down", "swiglu", "rope"):
        assert {(op, "forward"), (op, "backward")} <= phases, op
    # the layer's output and the gradients of its 9 weights (q, k, v, o, gate, up, down, two norms) leave the step
    assert len(res.run.trace.outputs) >= 1 + 9
    assert "phase" in out


def test_decode_against_a_kv_cache(capsys, tmp_path: Path, tiny_config: str) -> None:
    code, out, err, folder = trace_cli(capsys, tmp_path, "--hf", tiny_config, "--mode", "decode", "--kv-len", "24",
                                       "--attn-impl", "eager", "--no-plots", "--kernels")
    assert code == 0, err
    assert "Every call that launched kernels" in out and "layers.*.self_attn.q_proj" in out  # --kernels
    res = results.load(folder)
    assert (res.run.config.q_len, res.run.config.kv_len) == (1, 24)
    copies = [r for r in res.rows if r.op == "kv_cache"]
    assert len(copies) == 2  # DynamicCache copies K and V into a longer tensor at every token
    assert all(r.min_bytes >= 2 * 25 * 2 * 16 * 4 for r in copies)  # reads 24 + 1 rows, writes 25, per KV head


def test_a_plain_module_end_to_end(capsys, tmp_path: Path) -> None:
    code, out, err, folder = trace_cli(capsys, tmp_path, "--module", "tests.trace_factories:make", "--no-plots",
                                       "--batch", "3")
    assert code == 0, err
    res = results.load(folder)
    assert res.run.trace.kind == "module" and res.run.config.name == "make"
    by_module = {r.trace.module: r.op for r in res.rows}
    assert (by_module["qkv"], by_module["proj"], by_module["up"], by_module["down"]) == (
        "qkv_proj", "out_proj", "ffn_up", "ffn_down")
    assert by_module["norm"] == "layernorm" and "attention" in {r.op for r in res.rows}
    assert any(r.trace.shapes.startswith("48×32") or "3×16×32" in r.trace.shapes for r in res.rows)
    assert "make · prefill · fp32" in out


def test_a_factory_that_places_its_module_gets_device_and_dtype(capsys, tmp_path: Path) -> None:
    code, _, err, folder = trace_cli(capsys, tmp_path, "--module", "tests.trace_factories:make_placed", "--no-plots",
                                     "--mode", "train")
    assert code == 0, err
    assert {r.trace.phase for r in results.load(folder).rows} == {"forward", "backward"}


def test_the_python_api(tmp_path: Path) -> None:
    import trace_factories

    block, (x,) = trace_factories.make(seq_len=8, batch=1)
    res = roofline.trace(block, x, mode="train", out=tmp_path, repeats=1)
    assert isinstance(res, Results) and res.run.trace.kind == "api" and res.run.config.name == "TinyBlock"
    assert {"qkv_proj", "attention", "ffn_up", "ffn_down"} <= {r.op for r in res.rows}
    assert results.load(tmp_path).rows == res.rows  # saved as measured
    assert x.grad is not None  # a training step ran


def test_the_installed_kernels_package_wins_over_the_checkouts_folder(tmp_path: Path) -> None:
    """transformers imports the PyPI package `kernels` when it is installed; with the checkout first on sys.path
    (`python -m pytest`, a script run from the checkout) our kernels/ folder answered instead (ImportError)."""
    site = tmp_path / "site" / "kernels"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("INSTALLED = True\n")
    code = ("import sys; from roofline.measure.hf import prefer_installed_kernels; prefer_installed_kernels(); "
            "import kernels; print(getattr(kernels, 'INSTALLED', False), sys.path[0] == '')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr  # the installed one, and sys.path as it was


def test_a_trace_round_trips_and_renders_again(capsys, tmp_path: Path, tiny_config: str) -> None:
    code, _, err, folder = trace_cli(capsys, tmp_path, "--hf", tiny_config, "--no-plots", "--json", "-")
    assert code == 0, err
    res = results.load(folder)
    results.save(res, tmp_path / "again")
    assert results.load(tmp_path / "again").rows == res.rows
    assert main(["report", str(folder), "--out", str(tmp_path / "report"), "--no-svg"]) == 0
    assert (tmp_path / "report" / "report.html").is_file()
    capsys.readouterr()
    assert main(["compare", str(folder), str(tmp_path / "again")]) == 2  # a trace is not a profile to compare
    assert "is a `roofline trace`" in one_error_line(capsys.readouterr().err)


def test_beside_a_profile_of_the_same_shapes(capsys, tmp_path: Path, tiny_config: str) -> None:
    profiled = tmp_path / "profile"
    assert main(["profile", "--model", tiny_config, "--device", "cpu", "--seq-len", "16", "--budget", "0.01",
                 "--out", str(profiled), "--no-plots"]) == 0
    capsys.readouterr()
    code, out, err, folder = trace_cli(capsys, tmp_path, "--hf", tiny_config, "--no-plots", "--compare-profile",
                                       str(profiled / "results.json"))
    assert code == 0, err
    textbook = results.load(folder).run.trace.textbook
    assert textbook is not None and textbook.unfused_s > textbook.fused_s > 0 and textbook.mismatch == ""
    assert "Your layer" in out and "textbook unfused" in out and "best fused" in out


# --- bad targets --------------------------------------------------------------------------------------------------

BAD = {
    "no target": ([], "give one target", 2),
    "two targets": (["--hf", "x.json", "--module", "a:b"], "give one target", 2),
    "unimportable module": (["--module", "no_such_pkg.models:make"], "cannot import 'no_such_pkg.models'", 2),
    "no colon": (["--module", "tests.trace_factories"], "pkg.module:factory", 2),
    "no such factory": (["--module", "tests.trace_factories:absent"], "has no function 'absent'", 2),
    "a factory that raises": (["--module", "tests.trace_factories:raises"], "raised ValueError: the checkpoint", 2),
    "a factory returning one thing": (["--module", "tests.trace_factories:not_a_pair"], "must return", 2),
    "missing config": (["--hf", "absent/config.json"], "no Hugging Face config", 2),
    "unknown model id": (["--hf", "acme/absent-model"], "local Hugging Face cache", 2),
    "decode without kv-len": (["--module", "tests.trace_factories:make", "--mode", "decode"], "--kv-len", 2),
    "bad mode": (["--module", "tests.trace_factories:make", "--mode", "finetune"], "finetune", 2),
}


@pytest.mark.parametrize(("args", "needle", "exit_code"), BAD.values(), ids=BAD.keys())
def test_bad_targets_are_one_line(capsys, tmp_path: Path, args: list[str], needle: str, exit_code: int) -> None:
    code, _, err, _ = trace_cli(capsys, tmp_path, *args)
    assert needle in one_error_line(err) and code == exit_code


def test_an_unknown_architecture_or_attention_is_one_line(capsys, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY_LLAMA, "model_type": "not_a_model_type"}))
    code, _, err, _ = trace_cli(capsys, tmp_path, "--hf", str(path))
    assert "unknown architecture 'not_a_model_type'" in one_error_line(err) and code == 2
    path.write_text(json.dumps(TINY_LLAMA))
    code, _, err, _ = trace_cli(capsys, tmp_path, "--hf", str(path), "--attn-impl", "magic")
    assert "--attn-impl 'magic'" in one_error_line(err) and code == 2


def test_a_huge_seq_len_is_out_of_memory_before_anything_runs(capsys, tmp_path: Path, tiny_config: str) -> None:
    code, _, err, folder = trace_cli(capsys, tmp_path, "--hf", tiny_config, "--attn-impl", "eager", "--seq-len",
                                     "10000000")
    assert "out of memory" in one_error_line(err) and code == 3
    assert not (folder / "results.json").exists()  # nothing was measured, nothing allocated


def test_out_of_memory_mid_run_keeps_what_was_measured(capsys, tmp_path: Path) -> None:
    code, _, err, folder = trace_cli(capsys, tmp_path, "--module", "tests.trace_factories:out_of_memory_when_profiled")
    line = one_error_line(err, progress=True)
    assert code == 3 and "out of memory while profiling" in line and str(folder) in line
    saved = results.load(folder)
    assert saved.run.trace.step_time_s and len(saved.run.trace.step_samples_s) == 3 and not saved.rows


NO_TRANSFORMERS = """
import importlib.abc, sys
class NoTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers":
            raise ImportError("No module named 'transformers'")
sys.meta_path.insert(0, NoTransformers())
from roofline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_transformers_hf_is_one_line_and_module_still_works(tmp_path: Path, tiny_config: str) -> None:
    run = subprocess.run([sys.executable, "-c", NO_TRANSFORMERS, "trace", "--hf", tiny_config, "--device", "cpu",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 2
    line = one_error_line(run.stderr)
    assert "transformers" in line and "pip install" in line


# --- FLOPs, bytes ---------------------------------------------------------------------------------------------------

def test_grouped_query_causal_attention_flops() -> None:
    """8 query heads share 2 KV heads; causal at 32 tokens: 528 visible pairs of 1024. torch's formula (where it
    takes GQA shapes at all) counts the whole square; ours the pairs attended, with the query heads."""
    q, k = torch.randn(2, 8, 32, 16), torch.randn(2, 2, 32, 16)
    op = torch.ops.aten._scaled_dot_product_efficient_attention.default
    ours, theirs, rule, _ = aten_flops.count(op, (q, k, k, None, False), {"is_causal": True}, None)
    assert rule == "attention" and ours == 4 * 2 * 8 * 16 * (32 * 33 // 2)
    assert theirs in (None, 4 * 2 * 8 * 16 * 32 * 32)
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
    args = (q, q, k, k, q, torch.zeros(2, 8, 32), 0.0, True)
    assert aten_flops.count(backward, args, {}, None)[0] == 8 * 2 * 8 * 16 * (32 * 33 // 2)


def test_visible_pairs_top_left_and_bottom_right() -> None:
    assert aten_flops.visible_pairs(4, 4, True) == aten_flops.visible_pairs(4, 4, True, bottom_right=True) == 10
    assert aten_flops.visible_pairs(2, 6, True) == 1 + 2  # torch SDPA: query i sees keys ≤ i
    assert aten_flops.visible_pairs(2, 6, True, bottom_right=True) == 5 + 6  # flash-attn: keys ≤ i + 4
    assert aten_flops.visible_pairs(1, 6, True) == 6  # one decode query sees the whole cache


def test_element_wise_and_data_movement_flops() -> None:
    x = torch.randn(3, 5)
    assert aten_flops.count(torch.ops.aten.gelu.default, (x,), {"approximate": "tanh"}, x)[:3] == (9 * 15, None,
                                                                                                  "pointwise")
    assert aten_flops.count(torch.ops.aten.mean.dim, (x, [1]), {}, x.mean(1))[0] == 15
    assert aten_flops.count(torch.ops.aten.cat.default, ([x, x],), {}, torch.cat([x, x]))[:3] == (0.0, None,
                                                                                                 "data movement")
    mm = aten_flops.count(torch.ops.aten.mm.default, (x, x.T), {}, x @ x.T)
    assert mm[:3] == (2 * 3 * 3 * 5, 2 * 3 * 3 * 5, "torch")


def test_bytes_count_what_a_view_addresses() -> None:
    k = torch.randn(2, 4, 8)
    expanded = k[:, None].expand(2, 3, 4, 8)  # repeat_kv's input: 3 × the elements, one copy in memory
    assert addressed_bytes(expanded) == k.numel() * 4
    assert addressed_bytes(k[:, :2]) == 2 * 2 * 8 * 4


def test_a_reused_address_does_not_hand_its_id_to_the_next_new_tensor() -> None:
    """The allocator gives a freed address to the next tensor of its size; the tensor after that, at a new address,
    must still get an id of its own (it once got the reused tensor's id: two live tensors, one id, so a train
    trace counted 9 tensors leaving the step instead of 10, depending on where the allocator put them)."""
    from roofline.measure.op_recorder import ModuleStack, OpRecorder

    recorder = OpRecorder(ModuleStack())
    for address in (1000, 2000, 1000, 3000):  # 1000 freed and handed out again, then a new address
        recorder.allocated(address)
    assert len(set(recorder.ids.values())) == 3  # three live tensors, three ids
    assert recorder.tensor_id(torch.randn(4)) == "5"  # a tensor first seen later: the next id, never an old one


class Event:
    """A torch.profiler FunctionEvent as _kernel_times reads it: name, device, kernels, children, parent."""

    def __init__(self, name: str, kernels=(), children=(), device=torch.autograd.DeviceType.CPU) -> None:
        from types import SimpleNamespace

        self.name, self.device_type, self.cpu_parent = name, device, None
        self.kernels = [SimpleNamespace(name=k, duration=d) for k, d in kernels]
        self.cpu_children = list(children)
        for child in self.cpu_children:
            child.cpu_parent = self
        self.time_range = SimpleNamespace(elapsed_us=lambda: 7.0)


def test_kernels_belong_to_the_call_whose_range_holds_their_op() -> None:
    """On a GPU a kernel hangs on the innermost CPU op that launched it (aten::mm inside our range); the range's
    annotation on the GPU timeline, and kernels launched outside any call, are told apart."""
    from roofline.measure.trace import _kernel_times

    mm = Event("aten::mm", kernels=[("sm90_gemm", 30.0), ("splitk_reduce", 2.0)])
    call = Event("roofline::0:5", children=[Event("aten::linear", children=[mm])])
    gpu_annotation = Event("roofline::0:5", device=torch.autograd.DeviceType.CUDA)
    loose = Event("aten::copy_", kernels=[("memcpy", 4.0)])
    times, names, outside = _kernel_times([call, *call.cpu_children, mm, gpu_annotation, loose], cuda=True)
    assert times == {0: {5: pytest.approx(32e-6)}} and names == {5: ["sm90_gemm", "splitk_reduce"]}
    assert outside == [pytest.approx(4e-6)]
    cpu_times, cpu_names, _ = _kernel_times([call], cuda=False)  # on a CPU: the range's own time
    assert cpu_times == {0: {5: pytest.approx(7e-6)}} and cpu_names == {5: []}


# --- attribution and fusion opportunities, on rows made by hand -------------------------------------------------

def row(index: int, aten: str, module: str, unit: str = "vector", functions: tuple[str, ...] = (),
        phase: str = "forward", reads: dict | None = None, writes: dict | None = None, time_s: float = 1e-3,
        cls: str = "", forward_index: int | None = None) -> Row:
    r = Row(op="", variant=aten.split("::")[-1], group="", fused=False, unit=unit, model="m", batch=1, seq_len=8,
            q_len=8, kv_len=8, dtype="fp32", mode="prefill", per_block=1, flops=10.0, min_bytes=float(
                sum((reads or {}).values()) + sum((writes or {}).values())), intensity=1.0, time_median_s=time_s,
            peak_flops_per_s=1e11, peak_bytes_per_s=1e9)
    r.trace = TraceOp(index=index, aten_op=aten, phase=phase, module=module, module_class=cls,
                      functions=list(functions), reads=reads or {}, writes=writes or {}, forward_index=forward_index)
    return r


def test_attribution_by_module_caller_and_place_in_the_attention() -> None:
    gpt2 = [row(0, "aten::native_layer_norm", "h.0.ln_1", cls="LayerNorm"),
            row(1, "aten::addmm", "h.0.attn.c_attn", "tensor", cls="Conv1D"),
            row(2, "aten::mul", "h.0.attn", functions=("modeling_gpt2.eager_attention_forward",)),
            row(3, "aten::bmm", "h.0.attn", "tensor", ("modeling_gpt2.eager_attention_forward",)),
            row(4, "aten::where", "h.0.attn", functions=("modeling_gpt2.eager_attention_forward",)),
            row(5, "aten::_softmax", "h.0.attn", functions=("modeling_gpt2.eager_attention_forward",)),
            row(6, "aten::bmm", "h.0.attn", "tensor", ("modeling_gpt2.eager_attention_forward",)),
            row(7, "aten::clone", "h.0.attn", functions=("modeling_gpt2.forward",)),
            row(8, "aten::addmm", "h.0.attn.c_proj", "tensor", cls="Conv1D"),
            row(9, "aten::add", "h.0", functions=("modeling_gpt2.forward",)),
            row(10, "aten::addmm", "h.0.mlp.c_fc", "tensor"), row(11, "aten::tanh", "h.0.mlp.act"),
            row(12, "aten::addmm", "h.0.mlp.c_proj", "tensor"),
            row(13, "aten::mm", "h.0.mlp.c_proj", "tensor", phase="backward", forward_index=12),
            row(14, "aten::cat", "h.0.attn", functions=("modeling_gpt2.rotate_half",))]
    attribute(gpt2, BlockConfig(activation="gelu"))
    assert [r.op for r in gpt2] == ["layernorm", "qkv_proj", "qk_t", "qk_t", "mask", "softmax", "attn_v",
                                    "data movement", "out_proj", "residual_add", "ffn_up", "gelu", "ffn_down",
                                    "ffn_down", "rope"]
    assert gpt2[5].group == "attention" and gpt2[0].group == "norm" and gpt2[10].group == "ffn"


def run_of(rows: list[Row], outputs: list[str]) -> Results:
    return Results(run=Run(trace=TraceRun(target="t", step_time_s=0.02, outputs=outputs)), rows=rows)


def test_a_chain_must_move_only_what_enters_and_leaves_it() -> None:
    """mm → a → b → c → mm: the chain reads the first GEMM's output (1), its middle tensors (2, 3) stay on chip,
    and it writes what the next GEMM reads (4): 2 × 1 kB fused against 6 kB now."""
    rows = [row(0, "aten::mm", "m", "tensor", writes={"1": 1000}),
            row(1, "aten::add", "m", reads={"1": 1000}, writes={"2": 1000}),
            row(2, "aten::mul", "m", reads={"2": 1000}, writes={"3": 1000}),
            row(3, "aten::_to_copy", "m", reads={"3": 1000}, writes={"4": 1000}),
            row(4, "aten::mm", "m", "tensor", reads={"4": 1000})]
    chains = opportunities(run_of(rows, []))
    assert len(chains) == 1
    c = chains[0]
    assert (c.bytes_now, c.bytes_min, c.kernels, c.rows) == (6000, 2000, 3, [1, 2, 3])
    assert c.floor_s == pytest.approx(2000 / 1e9) and c.saving_s == pytest.approx(3e-3 - 2e-6)
    assert c.saving_pct == pytest.approx(100 * c.saving_s / 0.02)
    handed = opportunities(run_of(rows, ["3"]))[0]  # the step hands tensor 3 back: it must be written
    assert handed.bytes_min == 3000


def test_a_call_above_its_dram_roof_is_explained_by_what_the_cache_held() -> None:
    """A residual add reads the out_proj output written just before it: in a traced step part of that comes from
    L2, so the add may beat the DRAM roof (109 % on the H100) and is explained, not suspect. Not when other traffic
    pushed the output out of the cache in between, nor when it beats the roof even with those bytes served."""
    from roofline.analysis.placement import place_row
    from roofline.analysis.trace import explain_cache_hits

    mb = 1e6

    def step(pct: float, between: float = 0.0) -> Row:
        rows = [row(0, "aten::mm", "o_proj", "tensor", writes={"1": 40 * mb})]
        if between:
            rows.append(row(1, "aten::mul", "x", reads={"5": between / 2}, writes={"6": between / 2}))
        add = row(2, "aten::add", "layers.0", reads={"1": 40 * mb, "2": 40 * mb}, writes={"3": 40 * mb},
                  time_s=120 * mb / (pct / 100 * ROOFS.measured_bandwidth))
        place_row(add, ROOFS)
        assert add.suspect and round(add.pct_of_roof) == pct
        explain_cache_hits([*rows, add], int(50 * mb), ROOFS.error)
        return add

    explained = step(110)
    assert not explained.suspect
    assert "110 % of its DRAM roof: up to 40 MB of its reads were touched just before" in explained.note
    assert "DRAM moved at least 80 MB, at 73 % of the roof" in explained.note
    assert step(110, between=60 * mb).suspect  # 60 MB of other traffic in between: out of a 50 MB cache
    assert step(170).suspect  # 80 MB from DRAM would still be 113 % of the roof


def test_a_group_of_calls_on_two_units_is_placed_by_their_own_floors() -> None:
    """Eager Q·Kᵀ on the H100: a bf16 bmm (tensor cores) and a longer scaling mul (vector units, memory-bound).
    Their sums under the mul's vector roof read 233 %; by each call's own floor the group is under its roof."""
    from roofline.analysis.placement import place_row

    bmm = row(0, "aten::bmm", "attn", "tensor", reads={"1": 4e6}, writes={"2": 8e6}, time_s=1e-3)
    mul = row(1, "aten::mul", "attn", reads={"2": 8e6}, writes={"3": 8e6}, time_s=1.5e-3)
    bmm.flops, bmm.dtype, mul.flops = 3e8, "bf16", 4e6  # the sums under the vector roof: 120 %
    for r in (bmm, mul):
        r.op = "qk_t"
        place_row(r, ROOFS)
    assert bmm.pct_of_roof <= 100 and mul.pct_of_roof <= 100
    (g,) = groups(run_of([bmm, mul], []))
    assert g.pct_of_roof == pytest.approx(100 * (bmm.floor_s + mul.floor_s) / 2.5e-3)
    assert g.pct_of_roof <= 100 and g.bound == "memory"  # the mul's floor is the larger


def test_checks_explain_the_flop_counter_gap() -> None:
    rows = [row(0, "aten::_scaled_dot_product_flash_attention", "attn", "tensor"), row(1, "aten::add", "m")]
    rows[0].flops, rows[0].trace.torch_flops, rows[0].trace.flop_rule = 60.0, 100.0, "attention"
    rows[1].flops, rows[1].trace.flop_rule = 5.0, "pointwise"
    res = run_of(rows, [])
    res.run.trace.flop_counter_flops, res.run.trace.kernel_time_s = 100.0, 0.0195
    c = checks(res)
    assert (c.flops, c.causal_saving, c.pointwise, c.agree) == (65.0, 40.0, 5.0, True)
    assert c.flop_counter_flops - c.causal_saving + c.pointwise == c.flops
    attribute(res.rows, BlockConfig())
    assert [(g.op, g.calls) for g in groups(res)] == [("attention", 1), ("other", 1)]


# --- on a GPU (the device machine) ----------------------------------------------------------------------------------

GPU_LLAMA = {**TINY_LLAMA, "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 4,
             "intermediate_size": 2816}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("attn", "mode"), [("sdpa", "prefill"), ("eager", "train")])
def test_kernels_are_tied_to_their_calls_on_a_gpu(capsys, tmp_path: Path, attn: str, mode: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPU_LLAMA))
    out = tmp_path / "trace"
    code = main(["trace", "--hf", str(path), "--device", "cuda", "--seq-len", "2048", "--attn-impl", attn, "--mode",
                 mode, "--out", str(out), "--no-plots"])
    assert code == 0, capsys.readouterr().err
    res = results.load(out)
    t = res.run.trace
    assert all(r.trace.kernels for r in res.rows) and t.kernel_launches >= len(res.rows)
    assert t.outside_launches <= 2
    # the profiler's kernels are the step's; this small layer (4 MB activations) is host-bound on an H100
    # (measured: kernels 0.30 of a 2.13 ms sdpa step, 2.88 of a 7.53 ms eager train step), and the run says so
    assert 0 < t.kernel_time_s <= 1.05 * t.step_time_s
    assert t.kernel_time_s > 0.95 * t.step_time_s or "the GPU waited for the host" in capsys.readouterr().out
    assert t.peak_mem_bytes and t.peak_mem_bytes > 0
    assert {"qkv_proj", "rope", "rmsnorm", "ffn_up", "swiglu", "ffn_down"} <= {r.op for r in res.rows}
    assert ("attention" if attn == "sdpa" else "softmax") in {r.op for r in res.rows}
    assert all(r.pct_of_roof is not None for r in res.rows if r.min_bytes > 0)
    assert not [r for r in res.rows if r.suspect]  # under its roof, or above it by what the L2 held
