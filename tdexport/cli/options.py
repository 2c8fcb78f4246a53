"""Options shared by several commands, defined once so that their names, defaults and help never drift."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..errors import UsageError

RANK_HELP = (
    "Rank rule. vbmf: EVBMF per mode; vbmf:W: MUSCO-weakened EVBMF, 0<W≤1 (smaller keeps more); "
    "energy:E: smallest rank keeping more than fraction E of σ² per mode; ratio:F: keep fraction F of "
    "each mode (CP: of the output channels); N: fixed rank N; plan:FILE: replay an edited plan.json; "
    "params:Kx / macs:Kx (or a fraction kept, params:0.33): whole-model budget spent where the least spectral "
    "energy is lost; latency:Kx: measured speedup K on --target, verified end to end (unreachable: exit 2)."
)

FORMAT_HELP = ("tucker: k×k convs → 1×1·k×k·1×1 (Tucker-2), 1×1 convs and Linear → two-layer SVD. "
               "tt: the same chain from TT-SVD of (O, kh·kw, I) (TDC's 3-core TT); with --tt-type general, "
               "channels split into several TT modes (--tt-shape), every conv and Linear a chain of 1×1 convs / "
               "matmuls around one k×k conv. "
               "cp: k×k convs → 1×1·dw kh×1·dw 1×kw·1×1 (CP-ALS), others as tucker. "
               "svd: only 1×1 convs and Linear. "
               "ht2: k×k convs → 1×1·kh×1·1×kw·1×1 (hierarchical Tucker-2), stem by Tucker-1, others as tucker. "
               "reorder: every conv and Linear stored as the low DCT frequencies of its greedily reordered "
               "weights (--groups, --coef-ratio); saves storage, not MACs (exported dense).")
FORMAT_CHOICES = ["tucker", "tucker2", "tk", "tt", "cp", "svd", "ht2", "reorder"]


def weights_option(default: str):
    """``--weights`` with the given default."""
    return click.option(
        "--weights", default=default, show_default=True,
        help="'default' (published weights via torchvision, cached), 'random', or a checkpoint path "
             "(.safetensors, or a .pth/.pt state dict; loaded without unpickling code).",
    )


num_classes_option = click.option(
    "--num-classes", type=click.IntRange(min=1), default=None,
    help="Classifier width (default: the model's own; must match the weights).",
)

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace an existing non-empty --out whole (built beside it, swapped in, the old one deleted). "
         "Without it an existing non-empty --out is refused (exit 2).",
)


def layer_selection_options(func):
    """``--layers``, ``--exclude``, ``--include-stem``, ``--include-classifier`` and ``--round-to``."""
    options = [
        click.option("--round-to", default=None, metavar="K|auto",
                     help="Round every rank up to a multiple of K (e.g. 8 or 16 for tensor cores), never above "
                          "the mode size; 'auto' measures on --target which multiple runs best. [default: 1; auto "
                          "for params:/macs:/latency: budgets with a --target; --round-to 1 turns it off]"),
        click.option("--target", default=None, metavar="BACKEND[:BATCH]",
                     help="Runtime whose measured layer times drive decisions: a layer whose factor chain is not "
                          "faster there stays dense, and latency:Kx is priced on it (ort-cpu, ort-cuda, ort-trt, "
                          "trt; batch 1 when omitted; 'none': no measurement). Timings are cached "
                          "(TDEXPORT_CACHE_DIR)."),
        click.option("--no-cache", is_flag=True, help="Measure layer times afresh (neither read nor write the cache)."),
        click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
                     help="Only consider layers whose dotted name matches GLOB (repeatable), e.g. 'layer3.*'. "
                          "A glob that matches no Conv2d / Linear layer exits 2."),
        click.option("--exclude", "exclude_globs", multiple=True, metavar="GLOB",
                     help="Keep layers whose dotted name matches GLOB dense (repeatable); must match a layer."),
        click.option("--include-stem", is_flag=True, help="Also factor the first convolution (kept by default)."),
        click.option("--include-classifier", is_flag=True,
                     help="Also factor the last layer, usually the classifier (kept by default)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def method_options(func):
    """Per-format settings: general TT, reorder and the stem's method.

    --tt-type and --tt-shape (general TT), --groups, --coef-ratio, --progressive and --progressive-ref (reorder),
    --stem-method.
    """
    options = [
        click.option("--tt-type", type=click.Choice(["special", "general"]), default="special", show_default=True,
                     help="tt format: special = TDC's 3-core TT (O, kh·kw, I) as a Tucker-2 chain; general = I and O "
                          "each split into several modes, one core per mode plus the spatial core."),
        click.option("--tt-shape", multiple=True, metavar="N|NIN,NOUT|C=AxB",
                     help="General TT modes (repeatable): N modes per channel axis (balanced split; default 2), "
                          "NIN,NOUT for input/output separately, or C=AxB[xC…] to give the mode sizes of every "
                          "axis with C channels (e.g. 256=16x16)."),
        click.option("--groups", type=click.IntRange(min=1), default=4, show_default=True,
                     help="reorder: g, rows the flattened weight is viewed as (any g; the weight is zero-padded)."),
        click.option("--coef-ratio", type=click.FloatRange(min=0), default=0.25, show_default=True,
                     help="reorder: kept fraction of each row's DCT coefficients, in (0, 1]; with --progressive the "
                          "seed's r' ≥ 0 of r_l = 1 + r'·√N / --progressive-ref."),
        click.option("--progressive", is_flag=True,
                     help="reorder: per-layer ratio from the layer's size (bigger layers keep a smaller fraction)."),
        click.option("--progressive-ref", type=click.FloatRange(min=0, min_open=True), default=64.0,
                     show_default=True, help="reorder: the progressive rule's reference size (seed: 64 for "
                                             "ResNet-50, 156.8 = √(384·64) for MobileNet-V2)."),
        click.option("--stem-method", type=click.Choice(["tucker1"]), default=None,
                     help="Factor the stem (with --include-stem) by Tucker-1 (k×k conv I→R, 1×1 R→O) whatever the "
                          "format [default: the format's own; ht2 uses tucker1]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def method_kwargs(kw: dict) -> dict:
    """Pop the `method_options` values as `tdexport.planner.compress` keyword arguments."""
    return {"tt_type": kw.pop("tt_type"), "tt_shape": tuple(kw.pop("tt_shape")), "groups": kw.pop("groups"),
            "coef_ratio": kw.pop("coef_ratio"), "progressive": kw.pop("progressive"),
            "progressive_ref": kw.pop("progressive_ref"), "stem_method": kw.pop("stem_method")}


def run_name(model: str, fmt: str, tt_type: str) -> str:
    """Default output name MODEL-FORMAT, with ``ttg`` for the general TT."""
    from ..plan import normalise_format

    return f"{model}-{'ttg' if tt_type == 'general' else normalise_format(fmt)}"


def round_to_value(text: str | None) -> int | str | None:
    """``--round-to``: a positive integer or ``auto``; anything else exits 2."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--round-to takes a positive integer or 'auto', got {text!r}")
    return value


def selection_kwargs(kw: dict) -> dict:
    """Pop the `layer_selection_options` values as `tdexport.planner.compress` keyword arguments.

    ``--target`` is parsed here (exit 2 when malformed; ``none`` gives False, "explicitly no target", for
    commands that default one); ``--no-cache`` becomes a disabled `CostCache`.
    """
    from ..cost import CostCache, parse_target

    target, no_cache = kw.pop("target"), kw.pop("no_cache")
    return {"round_to": round_to_value(kw.pop("round_to")), "layers": kw.pop("layer_globs"),
            "exclude": kw.pop("exclude_globs"), "include_stem": kw.pop("include_stem"),
            "include_classifier": kw.pop("include_classifier"),
            "target": (False if target.strip().lower() == "none" else parse_target(target)) if target else None,
            "cost_cache": CostCache(enabled=False) if no_cache else None}


def training_options(func):
    """Options shared by train, finetune and admm (one place, so the three stay consistent)."""
    options = [
        click.option("--data", "data", default="digits", show_default=True,
                     help="Dataset: digits (scikit-learn's, offline), cifar10[:DIR], cifar100[:DIR], "
                          "imagenet:DIR, folder:DIR."),
        click.option("--download", is_flag=True, help="Let torchvision download CIFAR into DIR if missing."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [default: per command]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Images per step per process."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Peak learning rate [default: per command]."),
        click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True,
                     help="SGD momentum."),
        click.option("--nesterov/--no-nesterov", default=True, show_default=True, help="Nesterov momentum."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True,
                     help="L2 on weights (not biases / norm parameters)."),
        click.option("--sched", type=click.Choice(["cosine", "step", "onecycle"]), default="onecycle",
                     show_default=True,
                     help="LR schedule, per step: onecycle (ramp 30 %, cosine down), cosine, step."),
        click.option("--warmup-epochs", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Linear warm-up (cosine and step schedules)."),
        click.option("--decay-epochs", type=click.FloatRange(min=0, min_open=True), default=30.0,
                     show_default=True, help="Step schedule period."),
        click.option("--decay-rate", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
                     help="Step schedule factor."),
        click.option("--min-lr", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Cosine schedule floor."),
        click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0,
                     show_default=True, help="Cross-entropy label smoothing ε."),
        click.option("--mixup", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Mixup Beta(α, α); 0 disables."),
        click.option("--cutmix", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="CutMix Beta(α, α); 0 disables."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds data order, augmentation and mixing (CPU runs are reproducible)."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes."),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu or cuda[:N]; cuda without CUDA exits 4."),
        click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA (never used on CPU)."),
        click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Run directory: checkpoint, metrics.json, train_state.pt, train.log."),
        click.option("--resume", is_flag=True, help="Continue the interrupted run in --out exactly."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def train_config(kw: dict, *, epochs: int, lr: float, **extra):
    """Pop the `training_options` values into a `tdexport.train.TrainConfig`."""
    from ..train import TrainConfig

    return TrainConfig(
        epochs=kw.pop("epochs") or epochs, batch_size=kw.pop("batch_size"), lr=kw.pop("lr") or lr,
        momentum=kw.pop("momentum"), nesterov=kw.pop("nesterov"), weight_decay=kw.pop("weight_decay"),
        sched=kw.pop("sched"), warmup_epochs=kw.pop("warmup_epochs"), decay_epochs=kw.pop("decay_epochs"),
        decay_rate=kw.pop("decay_rate"), min_lr=kw.pop("min_lr"), label_smoothing=kw.pop("label_smoothing"),
        mixup=kw.pop("mixup"), cutmix=kw.pop("cutmix"), seed=kw.pop("seed"), workers=kw.pop("workers"),
        device=kw.pop("device"), amp=not kw.pop("no_amp"), **extra,
    )


def run_kwargs(kw: dict) -> dict:
    """Pop the run-directory options of `training_options`."""
    return {"data": kw.pop("data"), "out": kw.pop("out"), "download": kw.pop("download"),
            "resume": kw.pop("resume"), "progress": not kw.pop("quiet")}


def validate_options(func):
    """Options shared by validate and compress-and-export: backends, timing and gates."""
    options = [
        click.option("--backend", "backends", default="ort-cpu", show_default=True,
                     help="Comma-separated runners: torch, ort-cpu, ort-cuda, ort-trt, trt. A backend that "
                          "cannot run here exits 4 naming what is missing."),
        click.option("--batch-sizes", default=None,
                     help="Comma-separated latency batch sizes [default: 1,32; for an ONNX file exported with a "
                          "fixed batch, that batch]."),
        click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True,
                     help="Minimum timed runs per model and batch size."),
        click.option("--duration", type=click.FloatRange(min=0), default=3.0, show_default=True,
                     help="Minimum timed seconds per batch size (both models, interleaved)."),
        click.option("--warmup", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="Warm-up seconds per model before timing."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Intra-op threads pinned for every runner [default: the backend's own]."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Evaluate accuracy on the first N test images only."),
        click.option("--opset", type=click.IntRange(min=7), default=18, show_default=True,
                     help="ONNX opset of exported models."),
        click.option("--no-simplify", is_flag=True, help="Do not run onnxslim on exported graphs."),
        click.option("--max-acc-drop", type=float, default=None,
                     help="Gate: fail (exit 3) if top-1 drops by more than PTS percentage points (original − "
                          "compressed, on the first backend with accuracy)."),
        click.option("--min-speedup", type=float, default=None,
                     help="Gate: fail (exit 3) if the speedup on the first backend at the largest batch is below "
                          "X; the speedup is the median over interleaved rounds of original ÷ compressed latency."),
        click.option("--max-parity-err", type=float, default=None,
                     help="Gate: fail (exit 3) if, on any backend run, the compressed model's logits differ from "
                          "PyTorch fp32 eager logits of the same model on the same inputs by more than E (relative "
                          "L2). Judged after the report is written; exports always require 1e-4 on ONNX Runtime "
                          "CPU first."),
        *precision_options(several=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def export_precision_options(func):
    """`precision_options` for ``export``: one precision."""
    for option in reversed(precision_options(several=False)):
        func = option(func)
    return func


def precision_options(*, several: bool) -> list:
    """The options ``--precision``, ``--calib-data``, ``--calib-size`` and ``--int8-target``.

    ``several``: validation takes a list of precisions; export writes one.
    """
    what = ("Comma-separated precisions to judge: fp32 (always measured, the reference), fp16, int8. Reduced "
            "precisions are written into the ONNX (LABEL.fp16.onnx, LABEL.int8.onnx) and judged by accuracy, "
            "top-1 agreement and logits cosine against fp32; --max-acc-drop holds for each. Their latency is "
            "measured on GPU backends only." if several else
            "Precision written into the ONNX file: fp32; fp16 (casts, sensitive ops kept fp32, fp32 input and "
            "output); int8 (Q/DQ, static calibration on --calib-data). TensorRT 11 builds exactly this precision.")
    return [
        click.option("--precision", "precision", default="fp32", show_default=True, help=what),
        click.option("--calib-data", default=None,
                     help="Data spec of the int8 calibration images (train split) [default: --data]."),
        click.option("--calib-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Number of int8 calibration images."),
        click.option("--int8-target", type=click.Choice(["trt", "cpu"]), default="trt", show_default=True,
                     help="int8 layout: trt = TensorRT's symmetric int8 Q/DQ on Conv/Gemm inputs (what a TensorRT "
                          "engine fuses); cpu = ONNX Runtime CPU's uint8 activations (faster there)."),
    ]


def int_list(text: str, what: str) -> list[int]:
    """Parse comma-separated positive integers, raising `UsageError` (exit 2) otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{what} must be positive integers, got {text!r}")
    return values


def _finite(value: float | None, option: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")
    return value


def validate_kwargs(kw: dict) -> dict:
    """Pop the `validate_options` values as `tdexport.pipeline.validate_into` keyword arguments."""
    from ..runtime import BACKENDS
    from ..validate.reduced import parse_precisions

    backends = [b.strip() for b in kw.pop("backends").split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UsageError(f"unknown backend {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    if len(set(backends)) != len(backends):
        raise UsageError(f"--backend lists a backend twice: {','.join(backends)}")
    sizes = kw.pop("batch_sizes")
    max_parity_err = _finite(kw.pop("max_parity_err"), "--max-parity-err")
    if max_parity_err is not None and max_parity_err < 0:
        raise UsageError(f"--max-parity-err must be ≥ 0, got {max_parity_err}")
    min_speedup = _finite(kw.pop("min_speedup"), "--min-speedup")
    if min_speedup is not None and min_speedup <= 0:
        raise UsageError(f"--min-speedup must be > 0, got {min_speedup}")
    return {"backends": backends, "batch_sizes": int_list(sizes, "--batch-sizes") if sizes is not None else None,
            "iterations": kw.pop("iterations"), "duration": kw.pop("duration"), "warmup": kw.pop("warmup"),
            "threads": kw.pop("threads"), "limit": kw.pop("limit"), "opset": kw.pop("opset"),
            "simplify": not kw.pop("no_simplify"),
            "max_acc_drop": _finite(kw.pop("max_acc_drop"), "--max-acc-drop"),
            "min_speedup": min_speedup, "max_parity_err": max_parity_err,
            "precisions": parse_precisions(kw.pop("precision")), "calib_data": kw.pop("calib_data"),
            "calib_size": kw.pop("calib_size"), "int8_target": kw.pop("int8_target")}
