"""``maekit bench``: how fast a phase trains on this machine, and how much faster than the plain
way; or how fast the input pipeline feeds it (``--pipeline``).

The result is a table on the terminal, or one JSON object with ``--json``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from ..config import BenchConfig
from ..engine.distributed import resolve_device
from ..engine.precision import resolve_precision
from .hardware import device_name, peak_tflops
from .pipeline import measure_pipeline
from .step import (
    REFERENCE,
    REFERENCE_FP32,
    StepResult,
    ablation_modes,
    count_flops,
    dense_stages_of,
    fast_mode,
    measure,
    reference_modes,
)


def _rates(
    r: StepResult, flops: dict[bool, float | None], batch_size: int, peak: float | None
) -> dict:
    """The result plus its FLOPs per image, achieved TFLOP/s and MFU (when the FLOPs and the peak
    are known). ``flops``: FLOPs per step by ``dense_stages`` (ConvMAE's two computations of
    the same step)."""
    d = r.as_dict()
    flops_per_step = flops.get(r.dense_stages)
    d["gflops_per_image"] = flops_per_step / batch_size / 1e9 if flops_per_step else None
    d["tflops"] = flops_per_step / (r.step_ms / 1000) / 1e12 if flops_per_step else None
    d["mfu"] = d["tflops"] / peak if d["tflops"] is not None and peak else None
    return d


def median_round(rounds: list[StepResult]) -> StepResult:
    """The round with the median throughput (the lower middle one for an even count), with
    the highest peak memory of all rounds."""
    ordered = sorted(rounds, key=lambda r: r.img_per_s)
    mid = ordered[(len(ordered) - 1) // 2]
    return replace(mid, peak_mem_mb=max(r.peak_mem_mb for r in rounds))


def bench_step(cfg: BenchConfig) -> dict:
    """Measure the fast mode (and the reference with ``--reference``, the ablations with
    ``--ablate``); one flat dict: the fast mode's figures at the top level, the reference's under
    ``reference``, each ablation under ``ablation[<path>]``, and the ratios."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    modes = [fast_mode(cfg)] + (reference_modes(device) if cfg.reference else [])
    if cfg.ablate:
        modes += ablation_modes(cfg, resolve_precision(cfg.amp, device).name)
    # FLOPs first (of each computation the modes run: ConvMAE has two): on the meta device it
    # costs nothing, and it imports and builds everything once, so that start-up allocations
    # are not counted in the first mode's peak memory.
    flops = {
        d: count_flops(cfg, device, d) for d in sorted({dense_stages_of(cfg, m) for m in modes})
    }
    rounds: dict[str, list[StepResult]] = {m.name: [] for m in modes}
    for _ in range(cfg.rounds):  # alternate, so that machine drift hits all modes alike
        for m in modes:
            rounds[m.name].append(measure(cfg, device, m))
    fast_rounds = rounds["fast"]
    fast = median_round(fast_rounds)
    name = device_name(device)
    out = {
        "model": cfg.model,
        "phase": cfg.phase,
        "batch_size": cfg.batch_size,
        "input_size": cfg.input_size,
        "patch_size": cfg.patch_size,
        "device": str(device),
        "device_name": name,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "rounds": cfg.rounds,
        "peak_tflops": peak_tflops(name, fast.precision, cfg.peak_tflops),
        "torch": torch.__version__,
    }
    out.update(_rates(fast, flops, cfg.batch_size, out["peak_tflops"]))

    def versus(other: list[StepResult]) -> tuple[dict, float, float | None, list[float]]:
        """(the other mode's figures, fast / it in img/s and in peak memory, per round)."""
        r = median_round(other)
        d = _rates(r, flops, cfg.batch_size, peak_tflops(name, r.precision, cfg.peak_tflops))
        mem = fast.peak_mem_mb / r.peak_mem_mb if r.peak_mem_mb > 0 else None
        each = [f.img_per_s / x.img_per_s for f, x in zip(fast_rounds, other, strict=True)]
        return d, fast.img_per_s / r.img_per_s, mem, each

    if cfg.reference:  # the official way on this device (fp16 autocast on CUDA, else fp32)
        out["reference"], out["speedup"], out["mem_ratio"], out["round_speedups"] = versus(
            rounds[REFERENCE.name]
        )
        if REFERENCE_FP32.name in rounds:  # CUDA: the fp32 way as a second row
            (
                out["reference_fp32"],
                out["speedup_fp32"],
                out["mem_ratio_fp32"],
                out["round_speedups_fp32"],
            ) = versus(rounds[REFERENCE_FP32.name])
    if cfg.ablate:  # gain > 1: the path speeds the step up
        out["ablation"] = {}
        for m in modes:
            if m.without is not None:
                d, gain, mem, each = versus(rounds[m.name])
                out["ablation"][m.without] = {
                    **d,
                    "gain": gain,
                    "mem_ratio": mem,
                    "round_gains": each,
                }
    out["round_img_per_s"] = [r.img_per_s for r in fast_rounds]
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def dense_note(out: dict) -> str:
    """ConvMAE: the other computation's FLOPs, where a measured mode ran it."""
    rows = [out[k] for k in ("reference", "reference_fp32") if k in out]
    rows += list(out.get("ablation", {}).values())
    other = [r for r in rows if r["dense_stages"] != out["dense_stages"]]
    if not other:
        return ""
    where = "dense" if other[0]["dense_stages"] else "at the visible cells"
    return f" ({_fmt(other[0]['gflops_per_image'], '.1f')} G with the conv stages {where})"


def step_table(out: dict) -> str:
    rows = [out] + [out[k] for k in ("reference", "reference_fp32") if k in out]
    rows += list(out.get("ablation", {}).values())
    w = max(len(r["mode"]) for r in rows + [{"mode": "mode"}])
    lines = [
        f"maekit bench: {out['model']} {out['phase']}, batch {out['batch_size']} at "
        f"{out['input_size']} px on {out['device']} ({out['device_name']})",
        f"model FLOPs per image (forward + backward): {_fmt(out['gflops_per_image'], '.1f')} G"
        + dense_note(out),
        f"{'mode':{w}s} {'precision':9s} {'attention':9s} {'optimizer':16s} {'compile':7s} "
        f"{'ckpt':5s} {'img/s':>9s} {'step ms':>9s} {'peak MB':>9s} {'TFLOP/s':>8s} "
        f"{'MFU':>6s} {'loss':>8s}",
    ]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{r['mfu'] * 100:.1f}%"
        lines.append(
            f"{r['mode']:{w}s} {r['precision']:9s} {'fused' if r['fused_attn'] else 'matmul':9s} "
            f"{r['optimizer']:16s} {'yes' if r['compile'] else 'no':7s} "
            f"{'yes' if r['grad_ckpt'] else 'no':5s} {r['img_per_s']:9.2f} {r['step_ms']:9.1f} "
            f"{r['peak_mem_mb']:9.0f} {_fmt(r['tflops'], '8.2f')} {mfu:>6s} "
            f"{r['loss']:8.4f}"
        )
    if "speedup" in out:
        mem = out["mem_ratio"]
        lines.append(
            f"fast / reference: {out['speedup']:.2f}x throughput, {_fmt(mem, '.2f')}x peak memory"
        )
        if out["rounds"] > 1:
            each = ", ".join(f"{x:.2f}x" for x in out["round_speedups"])
            lines.append(f"median of {out['rounds']} alternating rounds; per round: {each}")
    if "speedup_fp32" in out:
        lines.append(
            f"fast / reference fp32: {out['speedup_fp32']:.2f}x throughput, "
            f"{_fmt(out['mem_ratio_fp32'], '.2f')}x peak memory"
        )
    for path, d in out.get("ablation", {}).items():
        each = ", ".join(f"{x:.2f}x" for x in d["round_gains"])
        lines.append(
            f"fast / fast without {path}: {d['gain']:.2f}x throughput, "
            f"{_fmt(d['mem_ratio'], '.2f')}x peak memory"
            + (f" (per round: {each})" if out["rounds"] > 1 else "")
        )
    return "\n".join(lines)


def pipeline_table(out: dict) -> str:
    where = ""
    if out["gpu_decode"]:
        where = (
            " on the GPU (nvJPEG decode)"
            if out.get("decode_device") == "cuda"
            else " through the --gpu_decode loader (decoded on the CPU)"
        )
    text = (
        f"maekit bench --pipeline: {out['data_path']} with the {out['phase']} transform"
        f"{where} at {out['input_size']} px, batch {out['batch_size']}, {out['num_workers']} "
        f"workers ({out['cpus']} CPUs)\n{out['images']} images: {out['img_per_s']:.1f} img/s, "
        f"{out['img_per_s_per_worker']:.1f} img/s per worker"
    )
    if out.get("batch_bytes") is not None:
        text += f"\n{out['sample_dtype']} batches, {out['batch_bytes'] / 2**20:.2f} MiB each"
    if out.get("open_files_per_worker") is not None:
        text += f", at most {out['open_files_per_worker']} open files per worker"
    if "decode" in out:
        d = out["decode"]
        text += (
            f"\nJPEGs: {d['jpegs']}, decoded on the device {d['gpu_decoded']}, CPU fallbacks "
            f"{d['cpu_fallback']}; other files (decoded in the workers) {d['cpu_decoded']}"
        )
    return text


def run(cfg: BenchConfig) -> dict:
    cfg.validate()
    if cfg.pipeline:
        out = measure_pipeline(cfg)
        print(json.dumps(out) if cfg.json else pipeline_table(out), flush=True)
    else:
        out = bench_step(cfg)
        print(json.dumps(out) if cfg.json else step_table(out), flush=True)
    return out
