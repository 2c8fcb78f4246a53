"""Command-line interface: a thin click shell over the Python API; maps errors to exit codes.

Exit codes: 0 ok · 1 internal error · 2 usage or input error · 3 a validation gate failed ·
4 a requested backend or optional package is unavailable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from . import __version__
from .errors import TdexportError, UsageError

_RANK_HELP = (
    "Rank rule. vbmf: EVBMF per mode; vbmf:W: MUSCO-weakened EVBMF, 0<W≤1 (smaller keeps more); "
    "energy:E: smallest rank keeping more than fraction E of σ² per mode; ratio:F: keep fraction F of "
    "each mode (CP: of the output channels); N: fixed rank N; plan:FILE: replay an edited plan.json."
)


def _weights_option(default: str):
    return click.option(
        "--weights", default=default, show_default=True,
        help="'default' (published weights via torchvision, cached), 'random', or a checkpoint path "
             "(.safetensors, or a .pth/.pt state dict; loaded without unpickling code).",
    )


_num_classes_option = click.option(
    "--num-classes", type=click.IntRange(min=1), default=None,
    help="Classifier width (default: the model's own; must match the weights).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tdexport")
def cli() -> None:
    """tdexport: compress CNNs with tensor decompositions and export them for deployment."""


@cli.command()
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "tt", "cp", "svd"], case_sensitive=False),
              help="tucker: k×k convs → 1×1·k×k·1×1 (Tucker-2), 1×1 convs and Linear → two-layer SVD. "
                   "tt: the same chain from TT-SVD of (O, kh·kw, I) (TDC's 3-core TT). "
                   "cp: k×k convs → 1×1·dw kh×1·dw 1×kw·1×1 (CP-ALS), others as tucker. "
                   "svd: only 1×1 convs and Linear.")
@click.option("--rank", "rank", default="vbmf", show_default=True, help=_RANK_HELP)
@_weights_option("default")
@_num_classes_option
@click.option("--round-to", type=click.IntRange(min=1), default=None,
              help="Round every rank up to a multiple of K (e.g. 8 or 16 for tensor cores), never above "
                   "the mode size.")
@click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
              help="Only consider layers whose dotted name matches GLOB (repeatable), e.g. 'layer3.*'.")
@click.option("--exclude", "exclude_globs", multiple=True, metavar="GLOB",
              help="Keep layers whose dotted name matches GLOB dense (repeatable).")
@click.option("--include-stem", is_flag=True, help="Also factor the first convolution (kept by default).")
@click.option("--include-classifier", is_flag=True,
              help="Also factor the last layer, usually the classifier (kept by default).")
@click.option("--iters", type=click.IntRange(min=0), default=5, show_default=True,
              help="Maximum HOOI refinement sweeps after the HOSVD start (Tucker-2); stops early at "
                   "convergence.")
@click.option("--cp-iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="ALS iterations for CP.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory for compressed.safetensors and plan.json [default: MODEL-FORMAT].")
@click.option("--quiet", "-q", is_flag=True, help="Print only the totals line, no per-layer table.")
def compress(model: str, fmt: str, rank: str, weights: str, num_classes: int | None, round_to: int | None,
             layer_globs: Sequence[str], exclude_globs: Sequence[str], include_stem: bool,
             include_classifier: bool, iters: int, cp_iters: int, out: Path | None, quiet: bool) -> None:
    """Factor MODEL's conv and linear layers and save a reloadable checkpoint.

    MODEL is a zoo name (see `tdexport models`). Writes OUT/plan.json (per-layer decisions, ranks,
    params and MACs) and OUT/compressed.safetensors; prints the per-layer table and totals.
    """
    from tqdm import tqdm

    from . import api
    from .plan import normalise_format
    from .ranks import parse_rank_rule
    from .table import plan_table, totals_line

    parse_rank_rule(rank)  # fail on a malformed rule before any model is built
    out = out or Path(f"{model}-{normalise_format(fmt)}")
    result = api.compress(
        model, format=fmt, rank=rank, weights=weights, num_classes=num_classes, round_to=round_to,
        layers=layer_globs, exclude=exclude_globs, include_stem=include_stem,
        include_classifier=include_classifier, iters=iters, cp_iters=cp_iters,
        progress=lambda items: tqdm(items, desc="factorizing", unit="layer", leave=False, disable=None),
    )
    api.save(out, result)
    if not quiet:
        click.echo(plan_table(result.plan))
    click.echo(totals_line(result.plan))
    click.echo(f"saved {out / 'compressed.safetensors'} and {out / 'plan.json'}")


@cli.command()
@click.argument("target")
@_weights_option("random")
@_num_classes_option
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "cp", "svd"], case_sensitive=False),
              help="For a dense MODEL: which format to judge layer eligibility for.")
def inspect(target: str, weights: str, num_classes: int | None, fmt: str) -> None:
    """Print the per-layer table of a saved result (DIR) or of a dense zoo MODEL."""
    from . import api
    from .checkpoint import is_checkpoint_dir
    from .plan import Plan
    from .table import plan_table, totals_line

    if Path(target).is_dir():
        if not is_checkpoint_dir(target):
            raise UsageError(f"{target} is a directory without plan.json (not a tdexport checkpoint)")
        plan = Plan.read(Path(target) / "plan.json")
    else:
        plan = api.survey(target, format=fmt, weights=weights, num_classes=num_classes)
    click.echo(plan_table(plan))
    click.echo(totals_line(plan))


@cli.command("models")
@click.argument("pattern", required=False)
def models(pattern: str | None) -> None:
    """List model names (optionally filtered by a glob PATTERN such as 'resnet*')."""
    from .zoo import list_models

    for name in list_models(pattern):
        click.echo(name)


def _training_options(func):
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


def _config(kw: dict, *, epochs: int, lr: float, **extra):
    from .train import TrainConfig

    return TrainConfig(
        epochs=kw.pop("epochs") or epochs, batch_size=kw.pop("batch_size"), lr=kw.pop("lr") or lr,
        momentum=kw.pop("momentum"), nesterov=kw.pop("nesterov"), weight_decay=kw.pop("weight_decay"),
        sched=kw.pop("sched"), warmup_epochs=kw.pop("warmup_epochs"), decay_epochs=kw.pop("decay_epochs"),
        decay_rate=kw.pop("decay_rate"), min_lr=kw.pop("min_lr"), label_smoothing=kw.pop("label_smoothing"),
        mixup=kw.pop("mixup"), cutmix=kw.pop("cutmix"), seed=kw.pop("seed"), workers=kw.pop("workers"),
        device=kw.pop("device"), amp=not kw.pop("no_amp"), **extra,
    )


def _run_kwargs(kw: dict) -> dict:
    return {"data": kw.pop("data"), "out": kw.pop("out"), "download": kw.pop("download"),
            "resume": kw.pop("resume"), "progress": not kw.pop("quiet")}


def _report_training(metrics: dict, out: Path) -> None:
    last = metrics.get("final_test_top1")
    if last is not None:
        click.echo(f"final test top-1 {last:.2f}%  ({len(metrics['epochs'])} epochs); saved in {out}")


@cli.command()
@click.argument("model")
@_weights_option("random")
@_num_classes_option
@_training_options
def train(model: str, weights: str, num_classes: int | None, **kw) -> None:
    """Train MODEL (dense baseline) on --data; defaults: 15 epochs, onecycle, peak lr 0.1.

    Writes OUT/model.safetensors + OUT/model.json (usable as --weights OUT) and OUT/metrics.json.
    """
    from .train import run

    cfg = _config(kw, epochs=15, lr=0.1)
    run_kw = _run_kwargs(kw)
    metrics = run.train(model, cfg=cfg, weights=weights, num_classes=num_classes, **run_kw)
    _report_training(metrics, run_kw["out"])


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--distill", type=click.Choice(["hard", "soft"]), default=None,
              help="Distil from the original model: hard (CE to its argmax) or soft (KL at --tau).")
@click.option("--teacher", default=None, help="Teacher zoo name [default: the compressed model's own].")
@click.option("--teacher-weights", default=None,
              help="Teacher weights: path or run directory [default: the weights it was compressed from].")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="loss = (1 − α)·task + α·distillation.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Soft distillation temperature.")
@_training_options
def finetune(directory: Path, distill: str | None, teacher: str | None, teacher_weights: str | None,
             alpha: float, tau: float, **kw) -> None:
    """Fine-tune a compressed checkpoint DIRECTORY; defaults: 4 epochs, onecycle, peak lr 0.05.

    Writes OUT/compressed.safetensors + OUT/plan.json (loadable with tdexport.load) and OUT/metrics.json.
    """
    from .train import run

    cfg = _config(kw, epochs=4, lr=0.05, distill=distill, alpha=alpha, tau=tau)
    run_kw = _run_kwargs(kw)
    metrics = run.finetune(directory, cfg=cfg, teacher=teacher, teacher_weights=teacher_weights, **run_kw)
    if metrics.get("start_test_top1") is not None:
        click.echo(f"test top-1 before fine-tuning {metrics['start_test_top1']:.2f}%")
    _report_training(metrics, run_kw["out"])


@cli.command()
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "tt", "svd"], case_sensitive=False),
              help="Rank set projected onto: Tucker-2 (HOSVD), TT (TT-SVD, 3 cores) or SVD (1×1 / Linear).")
@click.option("--rank", default="ratio:0.5", show_default=True, help=_RANK_HELP)
@click.option("--rho", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="ADMM penalty weight ρ in (ρ/2)‖W − Z + U‖².")
@click.option("--rho-final", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Grow ρ geometrically to this by the end [default: constant ρ].")
@click.option("--admm-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Optimizer steps between Z/U updates.")
@_weights_option("random")
@_num_classes_option
@_training_options
def admm(model: str, fmt: str, rank: str, rho: float, rho_final: float | None, admm_every: int, weights: str,
         num_classes: int | None, **kw) -> None:
    """ADMM low-rank-aware training of MODEL, then decomposition at the planned ranks.

    Writes OUT/compressed.safetensors + OUT/plan.json (ready for finetune), OUT/dense/ (trained dense
    model) and OUT/metrics.json with the projection gap per layer over time (admm_history).
    """
    from .ranks import parse_rank_rule
    from .train import run

    parse_rank_rule(rank)
    cfg = _config(kw, epochs=10, lr=0.05)
    run_kw = _run_kwargs(kw)
    metrics = run.admm(model, format=fmt, rank=rank, cfg=cfg, rho=rho, rho_final=rho_final,
                       admm_every=admm_every, weights=weights, num_classes=num_classes, **run_kw)
    if "decomposed_test_top1" in metrics:
        click.echo(f"decomposed after ADMM: test top-1 {metrics['decomposed_test_top1']:.2f}% "
                   f"(plain decomposition of the starting weights: {metrics['plain_decomposed_test_top1']:.2f}%)")
    _report_training(metrics, run_kw["out"])


def _validate_options(func):
    """Options shared by validate and compress-and-export: backends, timing and gates."""
    options = [
        click.option("--backend", "backends", default="ort-cpu", show_default=True,
                     help="Comma-separated runners: torch, ort-cpu, ort-cuda, ort-trt, trt. A backend that "
                          "cannot run here exits 4 naming what is missing."),
        click.option("--batch-sizes", default="1,32", show_default=True, help="Comma-separated latency batch sizes."),
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
                     help="Gate: fail (exit 3) if top-1 drops by more than PTS points."),
        click.option("--min-speedup", type=float, default=None,
                     help="Gate: fail (exit 3) if the speedup (first backend, largest batch) is below X."),
        click.option("--max-parity-err", type=float, default=None,
                     help="Gate: fail (exit 3) if ONNX Runtime vs torch relative L2 error exceeds E."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{what} must be positive integers, got {text!r}")
    return values


def _validate_kwargs(kw: dict) -> dict:
    from .runtime import BACKENDS

    backends = [b.strip() for b in kw.pop("backends").split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UsageError(f"unknown backend {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    return {"backends": backends, "batch_sizes": _int_list(kw.pop("batch_sizes"), "--batch-sizes"),
            "iterations": kw.pop("iterations"), "duration": kw.pop("duration"), "warmup": kw.pop("warmup"),
            "threads": kw.pop("threads"), "limit": kw.pop("limit"), "opset": kw.pop("opset"),
            "simplify": not kw.pop("no_simplify"), "max_acc_drop": kw.pop("max_acc_drop"),
            "min_speedup": kw.pop("min_speedup"), "max_parity_err": kw.pop("max_parity_err")}


@cli.command()
@click.argument("target")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .onnx file to write (atomically; nothing is written if parity fails).")
@click.option("--opset", type=click.IntRange(min=7), default=18, show_default=True, help="ONNX opset.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch dimension to N [default: dynamic batch].")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--max-parity-err", type=float, default=1e-4, show_default=True,
              help="Relative L2 error allowed between ONNX Runtime and torch; above it, exit 3, no file.")
@_weights_option("default")
@_num_classes_option
def export(target: str, out: Path, opset: int, batch: int | None, no_simplify: bool, max_parity_err: float,
           weights: str, num_classes: int | None) -> None:
    """Export TARGET (a checkpoint DIR or a zoo MODEL) to ONNX with standard operators only.

    Input 'input' (N, C, H, W), output 'logits'; BatchNorm folded; checked with onnx.checker; parity
    against torch on ONNX Runtime CPU is always verified.
    """
    from .export.onnx import export_onnx
    from .pipeline import resolve

    if not str(out).endswith(".onnx"):
        raise UsageError(f"--out must name an .onnx file, got {out}")
    art = resolve(target, label="compressed", weights=weights, num_classes=num_classes)
    if art.module is None:
        raise UsageError(f"{target} is already an ONNX file")
    res = export_onnx(art.module, out, input_shape=art.input_shape, opset=opset, batch=batch,
                      simplify=not no_simplify, max_parity_err=max_parity_err)
    p = res.parity
    click.echo(f"wrote {res.path} (opset {res.opset}, {res.exporter} exporter, "
               f"{'dynamic' if res.dynamic_batch else 'fixed'} batch, simplified: {res.simplified})")
    click.echo(f"parity vs torch: rel L2 {p.rel_l2_err:.2e}, max abs {p.max_abs_err:.2e}, cosine {p.cosine:.6f}, "
               f"top-1 agreement {100 * p.top1_agreement:.1f}%")
    click.echo(f"ops: {', '.join(res.op_types)}")


@cli.command()
@click.option("--original", "original", required=True,
              help="Reference model: an .onnx file, a checkpoint/run DIR, or a zoo MODEL name.")
@click.option("--compressed", "compressed", required=True,
              help="Model judged against it: an .onnx file, a checkpoint DIR, or a zoo MODEL name.")
@click.option("--data", default=None, help="Dataset for accuracy (digits, cifar10[:DIR], imagenet:DIR, …).")
@click.option("--weights", default="default", show_default=True, help="Weights for zoo MODEL names.")
@_num_classes_option
@_validate_options
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("validate"),
              show_default=True, help="Report folder: report.json, report.md, plots, exported ONNX.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def validate(original: str, compressed: str, data: str | None, weights: str, num_classes: int | None, out: Path,
             quiet: bool, **kw) -> None:
    """Compare two models: accuracy, parity, latency per backend; write a report; apply gates (exit 3)."""
    from . import pipeline

    opts = _validate_kwargs(kw)
    orig = pipeline.resolve(original, label="original", weights=weights, num_classes=num_classes)
    comp = pipeline.resolve(compressed, label="compressed", weights=weights, num_classes=num_classes)
    pipeline.validate(orig, comp, out, data=data, progress=not quiet, **opts)
    click.echo(f"report: {out / 'report.md'}")


@cli.command("compress-and-export")
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "tt", "cp", "svd"], case_sensitive=False),
              help="Decomposition format (see tdexport compress --help).")
@click.option("--rank", default="vbmf", show_default=True, help=_RANK_HELP)
@_weights_option("default")
@_num_classes_option
@click.option("--data", default=None, help="Dataset for fine-tuning and accuracy (digits, cifar10[:DIR], …).")
@click.option("--round-to", type=click.IntRange(min=1), default=None, help="Round ranks up to a multiple of K.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tune the compressed model for N epochs on --data before export (0: none).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Fine-tuning peak learning rate (onecycle).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Fine-tuning batch size.")
@click.option("--distill", type=click.Choice(["hard", "soft"]), default=None,
              help="Fine-tune with distillation from the original.")
@click.option("--device", default="auto", show_default=True, help="Fine-tuning device: auto, cpu, cuda.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fine-tuning seed.")
@_validate_options
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/MODEL-FORMAT]; appears whole or not at all.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def compress_and_export(model: str, fmt: str, rank: str, weights: str, num_classes: int | None, data: str | None,
                        round_to: int | None, finetune_epochs: int, lr: float, batch_size: int,
                        distill: str | None, device: str, seed: int, out: Path | None, quiet: bool, **kw) -> None:
    """Compress MODEL, optionally fine-tune, export both models to ONNX, validate, and report.

    The run folder holds plan.json, compressed.safetensors, original.onnx, compressed.onnx, report.json,
    report.md and plots. Gates (--max-acc-drop, --min-speedup, --max-parity-err) exit 3 after the report.
    """
    from . import pipeline
    from .plan import normalise_format
    from .ranks import parse_rank_rule

    parse_rank_rule(rank)
    opts = _validate_kwargs(kw)
    out = out or Path("runs") / f"{model}-{normalise_format(fmt)}"
    cfg = None
    if finetune_epochs:
        from .train import TrainConfig

        cfg = TrainConfig(epochs=finetune_epochs, lr=lr, batch_size=batch_size, distill=distill, device=device,
                          seed=seed)
    pipeline.compress_and_export(model, out, format=fmt, rank=rank, weights=weights, num_classes=num_classes,
                                 data=data, finetune_cfg=cfg, compress_options={"round_to": round_to},
                                 progress=not quiet, **opts)
    click.echo(f"run folder: {out}  (report: {out / 'report.md'})")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn tdexport errors into exit codes."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="tdexport",
                      standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except TdexportError as exc:
        click.echo(f"tdexport: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
