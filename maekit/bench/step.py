"""Training-step throughput of a phase on synthetic batches, the fast way and the plain way.

The step is the phases' own: the model, optimizer and loss come from the phases' recipes
(:mod:`maekit.phases`, so any registered model works, whatever its family), the model is wrapped
by the runs' :func:`~maekit.engine.parallelize.parallelize`, and the step runs inside the
shared :class:`~maekit.engine.trainer.Trainer` over a fixed batch that already lives on the
device. Only the input pipeline is left out (see :mod:`.pipeline`).

Two modes, built from the same seed so that they start from the same weights:

- ``fast`` (the default): ``--amp auto`` (bf16 where the device runs it fast), fused
  scaled-dot-product attention, fused AdamW, the loss read from the device every
  ``print_freq`` (20) steps only, plus ``--compile`` / ``--grad_ckpt`` when given.
- ``reference``: the official code's way of running, as it runs on the same torch: eager,
  attention as explicit matmul + softmax, torch's default AdamW (a per-parameter loop on CPU,
  ``foreach`` on CUDA), the loss read every step (``print_freq`` 1), TF32 left at torch's
  defaults (off for matmuls, on for cuDNN convolutions), and the official recipe's precision:
  fp16 autocast + GradScaler on CUDA (``torch.cuda.amp.autocast()`` in the official loop),
  fp32 on a CPU (that autocast does nothing there). On CUDA the fp32 way is measured too, as
  a second row (``reference fp32``), so that speed-ups against both are at hand; a CPU run
  has the one reference (fp16 autocast on a CPU is not what the official code does, and runs
  at half the fp32 speed or less: BENCHMARKS.md).

``--ablate`` adds the fast mode with one fast path switched off at a time (:func:`ablation_modes`),
so each path's own gain is a ratio measured in the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from ..config import BenchConfig
from ..engine.distributed import DistEnv
from ..engine.fastpath import fused_attention_modules, set_fused_attention
from ..engine.parallelize import parallelize
from ..engine.precision import resolve_precision
from ..engine.progress import RunRecorder
from ..engine.schedule import scaled_lr
from ..engine.trainer import LoopSettings, Trainer
from ..errors import MaekitError
from ..models.family import family_of_name
from ..phases import PHASES
from .hardware import MemoryMeter, synchronize

FAST_PRINT_FREQ = 20  # the phases' default --print_freq


@dataclass(frozen=True)
class StepMode:
    """How one measured step runs: which fast paths are on."""

    name: str  # "fast", "reference", or "fast without <path>"
    amp: str  # the phase's --amp
    fused_attn: bool  # scaled_dot_product_attention, else explicit matmul + softmax
    fused_optimizer: bool  # AdamW's fused kernel, else torch's default implementation
    print_freq: int  # steps between host reads of the loss
    compile: bool = False
    grad_ckpt: bool = False
    without: str | None = None  # the fast path an ablation switched off
    # ConvMAE's conv stages on every cell (the official way) instead of the visible cells only;
    # ignored by families without the option (MAE computes visible tokens only anyway)
    dense_stages: bool = False


# The official way, fp32: the reference on a CPU, the second reference row on CUDA.
REFERENCE = StepMode(
    "reference",
    amp="none",
    fused_attn=False,
    fused_optimizer=False,
    print_freq=1,
    dense_stages=True,
)
REFERENCE_FP32 = replace(REFERENCE, name="reference fp32")
# The official GPU recipe: fp16 autocast + GradScaler (the phases' --amp fp16 does both).
OFFICIAL_GPU = replace(REFERENCE, amp="fp16")


def reference_modes(device: torch.device) -> list[StepMode]:
    """The references ``--reference`` measures on ``device``: the first is the one quoted."""
    return [OFFICIAL_GPU, REFERENCE_FP32] if device.type == "cuda" else [REFERENCE]


@contextlib.contextmanager
def torch_default_tf32(active: bool) -> Iterator[None]:
    """TF32 at torch's defaults (matmul off, cuDNN on) while ``active``, as the official code
    leaves it; restored afterwards."""
    if not active:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def fast_mode(cfg: BenchConfig) -> StepMode:
    return StepMode(
        "fast",
        amp=cfg.amp,
        fused_attn=True,
        fused_optimizer=True,
        print_freq=FAST_PRINT_FREQ,
        compile=cfg.compile,
        grad_ckpt=cfg.grad_ckpt,
    )


def has_dense_stages(cfg: BenchConfig) -> bool:
    """Whether the benchmarked step has a dense reference computation (ConvMAE pre-training)."""
    return cfg.phase == "pretrain" and family_of_name(cfg.model).dense_option is not None


def dense_stages_of(cfg: BenchConfig, mode: StepMode) -> bool:
    """Whether ``mode`` runs dense conv stages in this benchmark."""
    return mode.dense_stages and has_dense_stages(cfg)


def ablation_modes(cfg: BenchConfig, fast_precision: str) -> list[StepMode]:
    """The fast mode with each of its fast paths switched off in turn (only those it uses:
    autocast when it runs in bf16/fp16, fused AdamW when the phase's optimizer is AdamW,
    --compile and --grad_ckpt when given, ConvMAE's visible-cell conv stages). fast / such a
    mode = that path's gain."""
    fast = fast_mode(cfg)
    off = {"fused_attn": {"fused_attn": False}, "deferred_loss_read": {"print_freq": 1}}
    if fast_precision != "fp32":
        off = {"amp": {"amp": "none"}, **off}
    if PHASES[cfg.phase].recipe_class().optimizer_kind == "adamw":  # LARS has one implementation
        off["fused_adamw"] = {"fused_optimizer": False}
    if cfg.compile:
        off["compile"] = {"compile": False}
    if cfg.grad_ckpt:
        off["grad_ckpt"] = {"grad_ckpt": False}
    if has_dense_stages(cfg):
        off["visible_cells"] = {"dense_stages": True}
    return [replace(fast, name=f"fast without {k}", without=k, **v) for k, v in off.items()]


@dataclass
class StepResult:
    mode: str  # the StepMode's name
    precision: str
    compile: bool
    grad_ckpt: bool
    fused_attn: bool
    optimizer: str
    loss_read_every: int  # steps between host reads of the loss
    img_per_s: float
    step_ms: float
    peak_mem_mb: float
    loss: float  # mean training loss of the timed steps
    tf32_matmul: bool = False  # fp32 matmuls ran in TF32 (CUDA)
    dense_stages: bool = False  # ConvMAE's conv stages on every cell (the official way)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def phase_config(cfg: BenchConfig, mode: StepMode):
    """The phase's own config with the benchmark's geometry and the mode's switches (defaults
    otherwise)."""
    cls = PHASES[cfg.phase].config
    given = dict(
        model=cfg.model,
        batch_size=cfg.batch_size,
        input_size=cfg.input_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        device=cfg.device,
        seed=cfg.seed,
        amp=mode.amp,
        compile=mode.compile,
        grad_ckpt=mode.grad_ckpt,
        print_freq=mode.print_freq,
        mask_ratio=cfg.mask_ratio,  # pre-training's own
        dense_stages=dense_stages_of(cfg, mode),  # ConvMAE pre-training's own
    )
    names = {f.name for f in dataclasses.fields(cls)}
    pc = cls(**{k: v for k, v in given.items() if k in names})
    pc.validate()
    return pc


def phase_recipe(pc, phase: str, nb_classes: int):
    """The phase's recipe over the benchmark's config, with the benchmark's class count as its
    data (the data a run would read is not opened)."""
    recipe_cls = PHASES[phase].recipe_class()
    return recipe_cls(pc, recipe_cls.bench_data(nb_classes))


def plain_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same AdamW (groups, hyper-parameters) with torch's default implementation, which is
    what the official code's ``torch.optim.AdamW(param_groups, ...)`` gets: ``foreach`` when the
    parameters are on CUDA, the per-parameter loop otherwise.

    Other optimizers (LARS) have a single implementation and are returned as they are.
    """
    if not isinstance(optimizer, torch.optim.AdamW):
        return optimizer
    params = [p for g in optimizer.param_groups for p in g["params"]]
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    plain = {"fused": False, "foreach": on_cuda}  # torch's default rule, made explicit
    groups = [{**g, **plain} for g in optimizer.param_groups]
    accepted = inspect.signature(torch.optim.AdamW).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return torch.optim.AdamW(groups, **{**defaults, **plain})


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.AdamW):
        g = optimizer.param_groups[0]
        impl = "fused" if g.get("fused") else "foreach" if g.get("foreach") else "loop"
        return f"{name}({impl})"
    return name


def synthetic_batch(cfg: BenchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of normalised-image-like noise and random labels, on the device."""
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, cfg.in_chans, cfg.input_size, cfg.input_size, generator=g)
    y = torch.randint(0, cfg.nb_classes, (cfg.batch_size,), generator=g)
    return x.to(device), y.to(device)


def _epoch(trainer: Trainer, batch, steps: int) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):  # the loop's progress lines
        return trainer.train_epoch([batch] * steps, 0)


def measure(cfg: BenchConfig, device: torch.device, mode: StepMode) -> StepResult:
    """Build the phase's step in one mode, warm up, time ``cfg.steps`` steps."""
    pc = phase_config(cfg, mode)
    meter = MemoryMeter(device)
    meter.start()
    recipe = phase_recipe(pc, cfg.phase, cfg.nb_classes)
    torch.manual_seed(cfg.seed)  # same initial weights and masking stream in both modes
    model = recipe.build_model().to(device)
    set_fused_attention(model, mode.fused_attn)
    precision = resolve_precision(pc.amp, device)
    env = DistEnv(0, 1, 0, device)
    pm = parallelize(
        model, env, precision, grad_ckpt=pc.grad_ckpt, compile=pc.compile, name=repr(pc.model)
    )
    lr = scaled_lr(pc.blr, cfg.batch_size)
    optimizer = recipe.build_optimizer(model, lr)
    if not mode.fused_optimizer:
        optimizer = plain_optimizer(optimizer)
    # Constant lr (min_lr = lr, no warm-up): the schedule's cost stays, its shape is irrelevant.
    settings = LoopSettings(lr=lr, min_lr=lr, warmup_epochs=0.0, epochs=1, print_freq=pc.print_freq)
    trainer = Trainer(
        pm,
        optimizer,
        recipe.build_loss(),
        settings,
        precision,
        env,
        RunRecorder(".", None, enabled=False),
    )
    batch = synthetic_batch(cfg, device)
    reference = mode.name.startswith("reference")
    try:
        with torch_default_tf32(reference and device.type == "cuda"):
            tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
            if cfg.warmup:
                _epoch(trainer, batch, cfg.warmup)
            synchronize(device)
            meter.reset_peak()
            start = time.perf_counter()
            stats = _epoch(trainer, batch, cfg.steps)  # ends with a host read
            synchronize(device)
            elapsed = time.perf_counter() - start
    except torch.OutOfMemoryError as e:
        raise MaekitError(
            f"out of memory at --batch_size {cfg.batch_size} ({mode.name} mode); lower "
            "--batch_size or add --grad_ckpt"
        ) from e
    except Exception as e:
        if not pc.compile or isinstance(e, MaekitError):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise MaekitError(f"--compile failed ({type(e).__name__}: {first}); drop --compile") from e
    fused_on, _ = fused_attention_modules(model)
    result = StepResult(
        mode=mode.name,
        precision=precision.name,
        compile=pc.compile,
        grad_ckpt=pc.grad_ckpt,
        fused_attn=fused_on > 0,
        optimizer=optimizer_name(optimizer),
        loss_read_every=min(pc.print_freq, cfg.steps),
        img_per_s=cfg.steps * cfg.batch_size / elapsed,
        step_ms=elapsed / cfg.steps * 1000,
        peak_mem_mb=meter.peak_mb(),
        loss=stats["loss"],
        tf32_matmul=bool(tf32),
        dense_stages=dense_stages_of(cfg, mode),
    )
    del trainer, pm, model, optimizer, batch, stats
    if pc.compile:
        torch._dynamo.reset()  # drop the compiled graphs (they hold the model)
    return result


def conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of ``aten.convolution_backward``, grouped convolutions included.

    Each gradient (input, weight) costs what the forward costs: one multiply-add per weight
    element per position of the smaller spatial side (the output of a convolution, the input of
    a transposed one) per image. The weight's shape (C_out, C_in / groups, *k) already holds the
    group split, so the forward count is 2 * N * prod(spatial) * prod(w_shape).
    FlopCounterMode's own formula gets the weight gradient as a dense convolution over the
    channel-transposed tensors, which ignores ``groups``: a depthwise conv's weight gradient
    counts C times too much there.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter():
    """A FlopCounterMode whose convolution backward counts grouped convolutions right."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops},
    )


def count_flops(cfg: BenchConfig, device: torch.device, dense_stages: bool = False) -> float | None:
    """FLOPs of one training step's forward + backward (the model's FLOPs: no recompute from
    --grad_ckpt, attention counted as its matmuls), via FlopCounterMode, once (grouped
    convolutions' backward by :func:`conv_backward_flops`).

    Counted on the meta device (shapes only, free); a model that cannot be built there is
    counted on ``device`` instead. None when neither works. ``dense_stages``: ConvMAE's conv
    stages on every cell (the reference's computation), else at the visible cells.
    """
    pc = phase_config(cfg, replace(REFERENCE, dense_stages=dense_stages))
    recipe = phase_recipe(pc, cfg.phase, cfg.nb_classes)
    loss_fn = recipe.build_loss()
    for where in (torch.device("meta"), device):
        try:
            with torch.device(where):
                model = recipe.build_model()
            set_fused_attention(model, False)  # the CPU fused kernel has no FLOP formula
            x, y = synthetic_batch(cfg, where)
            with flop_counter() as counter:
                loss_fn(model, x, y).backward()
            return float(counter.get_total_flops())
        except Exception:  # a meta-unfriendly model: try the real device
            continue
    return None
