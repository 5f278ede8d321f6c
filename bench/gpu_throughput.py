"""GPU throughput: egoqa's worker against the original pipeline's loop and against the hardware limit.

One process, one device. The model is Qwen2.5-VL-7B-Instruct's real architecture (its published
config) with random weights, built on the meta device and materialised on the GPU in bf16; its
tokenizer and processor are the tiny checkpoint's (same special tokens, same vision geometry).
Random weights never emit EOS here (the LM head rows of special tokens are zero): every sequence
runs to `max_new_tokens`, the worst case. Without CUDA it runs the tiny model on the CPU.

Measured in the same run: device-to-device copy bandwidth → the decode bound (a decode step reads
every weight once); bf16 matmul rate → the prefill bound; decode steps/s at batch 1/8/16/32 as a
fraction of the bound; prefill FLOP/s; static KV cache, with and without `torch.compile` (CUDA
only); then the workload — the synthetic dataset, stage_analysis under a preset shaped like
`coarse` (8 uniform frames, sampled turns, 5 samples for segments) — run by (a) the original's
loop, (b) egoqa's `Worker` (auto batch size, claiming ahead) and (b') the same without claiming
ahead, each from a fresh database. `--budget` sizes the workload to fit the wall time.

Reproduce: `python bench/gpu_throughput.py` (GPU: about `--budget` seconds, default 330, model
build included); `--quick` for the smoke run (tiny model, CPU, under a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _gpu_limits as limits
from _common import CACHE, banner, table
from _gpu_model import build, linear_params
from _gpu_systems import run_egoqa, run_original

from egoqa.dev.synth import write_synth_dataset
from egoqa.dev.tinymodel import build_tiny_model
from egoqa.media.frames import FrameDecoder
from egoqa.plan.config import load_config
from egoqa.work.batchrun import DECODE_STEP_TOKENS


@dataclass
class Plan:
    """Sizes of everything measured; the workload's clip count is set from the budget later."""

    queries: int  # per clip
    max_edge: int
    video: tuple[int, int]
    new_tokens: int
    copy_mb: int
    matmul_n: int
    batches: tuple[int, ...]
    prompt: int  # tokens of the decode-rate prompts
    steps: int
    prefill: tuple[int, int]  # batch, tokens
    clips: int = 2


def plan_for(quick: bool, cuda: bool) -> Plan:
    if cuda:
        return Plan(6, 448, (448, 336), 64, 2048, 8192, (1, 8, 16, 32), 512, 48, (8, 1024))
    if quick:
        return Plan(1, 112, (160, 120), 4, 64, 256, (1, 8), 32, 4, (4, 64))
    return Plan(4, 224, (320, 240), 24, 256, 512, (1, 8, 16, 32), 256, 16, (8, 256))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, CPU, seconds")
    parser.add_argument("--budget", type=float, default=330.0, help="wall seconds to fit in")
    parser.add_argument("--model", choices=("7b", "tiny"), help="default: 7b with CUDA, else tiny")
    parser.add_argument("--compile", action="store_true", help="also time static cache + compile")
    parser.add_argument("--profile", action="store_true", help="profile decode steps at batch 16")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(banner("gpu_throughput", argv), flush=True)
    import torch

    cuda = torch.cuda.is_available() and not args.quick
    device = "cuda:0" if cuda else "cpu"
    which = args.model or ("7b" if cuda else "tiny")
    if which == "7b" and not cuda:
        print("error: --model 7b needs a CUDA GPU; leave --model out to run the tiny model on CPU")
        return 2
    dtype = torch.bfloat16 if cuda else torch.float32
    plan = plan_for(args.quick, cuda)
    built = build(which, build_tiny_model(CACHE / "tiny-qwen2.5-vl"), device, dtype)
    print(setup_table(built, device, dtype, time.perf_counter() - started), flush=True)
    bound = hardware(built, plan, device, dtype)
    left = args.budget - (time.perf_counter() - started)
    size_workload(plan, bound["call_s"], left - (150 if args.compile else 0), args.quick)
    runs = systems(built, plan, device, which)
    print(throughput_table(runs, plan, device), flush=True)
    print(targets(runs, bound, device, time.perf_counter() - started), flush=True)
    if args.profile or args.quick:
        print(profile_table(built, plan, device), flush=True)
    left = args.budget - (time.perf_counter() - started)
    print(cache_table(built, plan, device, bound, allow_compile=args.compile and left > 120))
    print(f"whole run: {time.perf_counter() - started:.0f} s wall")
    return 0


def setup_table(built, device, dtype, elapsed: float) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    rows = [
        ["device", f"{name} ({device})"],
        ["model", f"{built.name}, random weights, {str(dtype).removeprefix('torch.')}"],
        ["parameters", f"{built.params / 1e6:,.1f} M"],
        ["weights a decode step reads", f"{built.step_bytes / 1e6:,.1f} MB"],
        ["built on the meta device, materialised and initialised in", f"{built.seconds:.1f} s"],
        ["run so far (imports, processor, model)", f"{elapsed:.1f} s"],
        ["torch / transformers", f"{torch.__version__} / {_version('transformers')}"],
        ["EOS", "never emitted (special-token rows of the LM head are zero): the worst case"],
    ]
    return table("Setup", ["", ""], rows)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def hardware(built, plan: Plan, device: str, dtype) -> dict:
    """The bounds and plain `generate`'s decode and prefill rates; prints their tables."""
    from egoqa.backends.token_sampling import SeededSampling
    from egoqa.plan.config import GenerationConfig

    bw = limits.copy_bandwidth(device, plan.copy_mb)
    flops = limits.matmul_rate(device, dtype, plan.matmul_n)
    bound = bw / built.step_bytes
    settings = GenerationConfig(max_new_tokens=plan.steps, temperature=0.8, top_p=0.95, top_k=50)

    def sampler(batch):
        return SeededSampling(list(range(batch)), settings, built.model.device)

    rows, rates = [], {}
    for b in plan.batches:
        args = (built.model, b, plan.prompt, plan.steps, built.vocab_in_use, device)
        rates[b] = limits.decode_rate(*args)
        seeded = limits.decode_rate(*args, sampler=sampler)
        rows.append([b, rates[b], rates[b] * b, f"{rates[b] / bound:.1%}", seeded,
                     f"{seeded / bound:.1%}"])  # fmt: skip
    pre = limits.prefill(built.model, *plan.prefill, built.vocab_in_use, device,
                         linear_params(built.model))  # fmt: skip
    out = {"bw": bw, "flops": flops, "bound": bound, "rates": rates, "prefill": pre}
    # What one decode step costs in prompt tokens prefilled (egoqa cuts a batch by prompt length
    # only where the padding saved costs more than that many tokens per step of another pass).
    out["step_tokens_ideal"] = (built.step_bytes / bw) / (2 * linear_params(built.model) / flops)
    b = 16 if 16 in rates else max(rates)
    out["step_tokens"] = pre["tokens_s"] / rates[b]
    out["call_s"] = plan.new_tokens / rates[1] + 2 * (plan.prompt + 800) / pre["tokens_s"]
    print(limits_tables(out, rows, plan), flush=True)
    return out


def limits_tables(h: dict, rows: list, plan: Plan) -> str:
    pre = h["prefill"]
    hw = table(
        "Hardware, measured in this run",
        ["quantity", "value"],
        [
            ["device-to-device copy bandwidth (read + write)", f"{h['bw'] / 1e9:,.0f} GB/s"],
            ["decode bound: bandwidth ÷ weights a step reads", f"{h['bound']:.1f} steps/s"],
            [f"matmul rate ({plan.matmul_n}², model dtype)", f"{h['flops'] / 1e12:.3g} TFLOP/s"],
            [
                "prompt tokens a decode step costs to prefill, at these bounds",
                f"{h['step_tokens_ideal']:.3g}",
            ],  # fmt: skip
            [
                "... as measured: prefill tokens/s ÷ decode steps/s (batch 16)",
                f"{h['step_tokens']:.3g} (egoqa assumes {DECODE_STEP_TOKENS:g})",
            ],  # fmt: skip
        ],
    )
    decode = table(
        f"Decode steps/s by batch (plain `generate`, eager, dynamic cache; {plan.prompt}-token "
        "prompts)",
        ["batch", "steps/s", "tokens/s", "of bound", "steps/s, seeded sampling", "of bound"],
        rows,
    )
    b, n = plan.prefill
    prefill = table(
        "Prefill (one forward, text only)",
        ["batch × tokens", "seconds", "tokens/s", "TFLOP/s", "of matmul rate"],
        [
            [
                f"{b} × {n}",
                pre["seconds"],
                pre["tokens_s"],
                f"{pre['flops'] / 1e12:.3g}",
                f"{pre['flops'] / h['flops']:.1%}",
            ]
        ],  # fmt: skip
    )
    return "\n\n".join([hw, decode, prefill])


def size_workload(plan: Plan, call_s: float, seconds: float, quick: bool) -> None:
    """Clips so that the original's loop takes ~55 % of `seconds` (egoqa's two runs share the
    rest); halve the answer length first if not even two clips fit."""
    if quick:
        return
    calls = 2 + 2 * plan.queries  # two per-clip turns, two per-query turns
    clips = int(0.55 * seconds / (calls * call_s))
    if clips < 2 and plan.new_tokens > 16:
        plan.new_tokens //= 2
        call_s /= 1.8
        clips = int(0.55 * seconds / (calls * call_s))
    plan.clips = max(1, min(16, clips))


def workload(plan: Plan, which: str, device: str):
    data = write_synth_dataset(
        CACHE / f"gpu-synth-{plan.clips}x{plan.queries}-{plan.video[0]}",
        clips=plan.clips,
        queries_per_clip=plan.queries,
        duration_sec=16.0,
        size=plan.video,
    )
    model = CACHE / "tiny-qwen2.5-vl"
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    config = load_config(
        "demo",
        [f'model="{model}"', f'dtype="{dtype}"', 'batch.size="auto"', "batch.max=64",
         f"sampler.max_edge={plan.max_edge}", f"generation.max_new_tokens={plan.new_tokens}"],
    )  # fmt: skip
    return data, config


def systems(built, plan: Plan, device: str, which: str) -> list:
    from egoqa.backends.transformers import TransformersBackend

    data, config = workload(plan, which, device)
    backend = TransformersBackend.from_parts(str(CACHE / "tiny-qwen2.5-vl"), built.model,
                                             built.processor)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="egoqa-gpu-") as tmp:
        tmp = Path(tmp)
        original = run_original(tmp / "a.db", data, config, backend, FrameDecoder(), device)
        ahead = run_egoqa(tmp / "b.db", data, config, backend, True, device)
        plain = run_egoqa(tmp / "c.db", data, config, backend, False, device)
    return [original, ahead, plain]


def throughput_table(runs: list, plan: Plan, device: str) -> str:
    base = runs[0]
    rows = []
    for r in runs:
        rows.append([
            r.name, r.jobs, r.calls, r.wall, r.jobs_s, r.generated / r.wall, r.visual / r.wall,
            r.text / r.wall, f"{1 - r.generate_s / r.wall:.1%}",
            f"{1 - r.model_generate_s / r.wall:.1%}",
            f"{r.padding / max(1, r.padding + r.text + r.visual):.1%}",
            "n/a on CPU" if r.peak_gb is None else f"{r.peak_gb:.1f}", f"{r.jobs_s / base.jobs_s:.2f}×",
        ])  # fmt: skip
    head = [
        "system", "jobs (the workload)", "generate calls", "wall s", "jobs/s", "generated tok/s",
        "prefill visual tok/s", "prefill text tok/s", "outside backend generate",
        "outside model.generate", "left padding", "peak GPU GB", "jobs/s ÷ original",
    ]  # fmt: skip
    what = (
        f"{plan.clips} clips × {plan.queries} queries, stage_analysis, 8 frames at "
        f"{plan.max_edge} px, {plan.new_tokens} new tokens, 5 samples for segments"
    )
    notes = [f"{r.name}: {r.extra}" for r in runs if r.extra]
    return "\n".join([table(f"Throughput: the original's loop vs egoqa ({what})", head, rows),
                      "", *notes])  # fmt: skip


def profile_table(built, plan: Plan, device: str) -> str:
    b = 16 if 16 in plan.batches else plan.batches[-1]
    p = limits.profile_decode(built.model, b, plan.prompt, 8, built.vocab_in_use, device)
    busy = "n/a on CPU" if p["device_s"] is None else f"{p['device_s'] / p['wall']:.0%}"
    rows = [[name, seconds * 1e3, count] for name, seconds, count in p["ops"]]
    head = f"Profile: 8 decode steps at batch {b}, {p['wall']:.2f} s wall; device busy {busy}"
    clock = "self device ms" if p["device_s"] is not None else "self CPU ms"
    return table(head, ["operator", clock, "calls"], rows)


def cache_table(built, plan: Plan, device: str, bound: dict, allow_compile: bool) -> str:
    b = 16 if 16 in plan.batches else plan.batches[-1]
    variants = limits.cache_variants(built.model, b, plan.prompt, plan.steps,
                                     built.vocab_in_use, device, allow_compile)  # fmt: skip
    rows = []
    for v in variants:
        rate = "–" if v.steps_s is None else v.steps_s
        share = "–" if v.steps_s is None else f"{v.steps_s / bound['bound']:.1%}"
        first = "–" if v.first_call_s is None else v.first_call_s
        rows.append([v.name, rate, share, first, v.note])
    head = ["cache", "steps/s", "of bound", "first call s (compile)", "note"]
    return table(f"Static KV cache and torch.compile (batch {b})", head, rows)


def targets(runs: list, bound: dict, device: str, wall: float) -> str:
    ratio = runs[1].jobs_s / runs[0].jobs_s
    big = [b for b in bound["rates"] if b >= 16]
    best = max((bound["rates"][b] / bound["bound"] for b in big), default=None)
    outside = 1 - runs[1].generate_s / runs[1].wall

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"egoqa ÷ original, jobs/s: {ratio:.2f}× (target ≥ 4×: {verdict(ratio >= 4)})",
        "decode steps/s at batch ≥ 16 ÷ bound: "
        + (
            "not measured"
            if best is None
            else f"{best:.1%} (target ≥ 50 %: {verdict(best >= 0.5)})"
        ),
        f"egoqa time outside generate: {outside:.1%} (target ≤ 3 %: {verdict(outside <= 0.03)})",
        f"so far: {wall:.0f} s wall"
        + ("" if device.startswith("cuda") else " (CPU: the targets are for a GPU)"),  # fmt: skip
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main(sys.argv[1:]))
