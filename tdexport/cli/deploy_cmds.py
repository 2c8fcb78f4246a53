"""Deployment commands: ``export``, ``validate`` and the flagship ``compress-and-export``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ..errors import UsageError
from .options import (
    FORMAT_CHOICES,
    RANK_HELP,
    export_precision_options,
    layer_selection_options,
    method_kwargs,
    method_options,
    num_classes_option,
    overwrite_option,
    run_name,
    selection_kwargs,
    validate_kwargs,
    validate_options,
    weights_option,
)

__all__ = ["export", "validate", "compress_and_export"]


@click.command()
@click.argument("target")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .onnx file to write (atomically; nothing is written if parity fails).")
@click.option("--opset", type=click.IntRange(min=7), default=18, show_default=True, help="ONNX opset.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch dimension to N [default: dynamic batch].")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--max-parity-err", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Relative L2 error allowed between ONNX Runtime CPU and PyTorch fp32 logits of the model on "
                   "the same inputs; above it, exit 3 and no file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (refused otherwise, exit 2).")
@weights_option("default")
@num_classes_option
@export_precision_options
def export(target: str, out: Path, opset: int, batch: int | None, no_simplify: bool, max_parity_err: float,
           overwrite: bool, weights: str, num_classes: int | None, precision: str, calib_data: str | None,
           calib_size: int, int8_target: str) -> None:
    """Export TARGET (a checkpoint DIR or a zoo MODEL) to ONNX with standard operators only.

    Input 'input' (N, C, H, W), output 'logits'; BatchNorm folded; checked with onnx.checker; parity
    against torch on ONNX Runtime CPU is always verified.
    """
    from ..artifacts import resolve
    from ..export.onnx import export_onnx

    if not str(out).endswith(".onnx"):
        raise UsageError(f"--out must name an .onnx file, got {out}")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    art = resolve(target, label="compressed", weights=weights, num_classes=num_classes)
    if art.module is None:
        raise UsageError(f"{target} is already an ONNX file")
    from ..export.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "int8" and calib_data is None:
        raise UsageError("--precision int8 needs --calib-data SPEC (e.g. digits, imagenet:DIR) for calibration")
    with tempfile.TemporaryDirectory(prefix="tdexport-export-") as tmp:
        fp32_path = out if precision == "fp32" else Path(tmp) / "fp32.onnx"
        res = export_onnx(art.module, fp32_path, input_shape=art.input_shape, opset=opset, batch=batch,
                          simplify=not no_simplify, max_parity_err=max_parity_err)
        if precision != "fp32":
            _convert_export(fp32_path, out, precision, art.input_shape, calib_data, calib_size, int8_target)
    p = res.parity
    click.echo(f"wrote {res.path} (opset {res.opset}, {res.exporter} exporter, "
               f"{'dynamic' if res.dynamic_batch else 'fixed'} batch, simplified: {res.simplified})")
    click.echo(f"parity vs torch: rel L2 {p.rel_l2_err:.2e}, max abs {p.max_abs_err:.2e}, cosine {p.cosine:.6f}, "
               f"top-1 agreement {100 * p.top1_agreement:.1f}%")
    click.echo(f"ops: {', '.join(res.op_types)}")


def _convert_export(fp32_path: Path, out: Path, precision: str, input_shape, calib_data: str | None,
                    calib_size: int, int8_target: str) -> None:
    """Write ``out`` at ``precision`` from the fp32 export and print how it agrees with fp32."""
    import numpy as np

    from ..export.precision import agreement, calibration_batches, convert
    from ..runtime import OrtRunner

    calibration = (calibration_batches(calib_data, calib_size, input_shape=input_shape)
                   if precision == "int8" else None)
    result = convert(fp32_path, out, precision, calibration=calibration, int8_target=int8_target)
    images = (next(iter(calibration_batches(calib_data, min(calib_size, 64), input_shape=input_shape, seed=1)))
              if calib_data else np.random.default_rng(0).standard_normal((8, *input_shape)).astype(np.float32))
    with OrtRunner(fp32_path) as ref, OrtRunner(out) as low:
        fixed = ref.fixed_batch
        if fixed is not None:
            images = np.resize(images, (fixed, *images.shape[1:]))
        a = agreement(ref.infer(images), low.infer(images))
    click.echo(f"{precision}: {result.quantize_nodes} QuantizeLinear, {result.cast_nodes} Cast nodes"
               + (f", int8 target {int8_target}" if precision == "int8" else ""))
    click.echo(f"{precision} vs fp32 on ONNX Runtime CPU ({a['samples']} images): top-1 agreement "
               f"{100 * a['top1_agreement']:.1f}%, logits cosine {a['cosine']:.6f}")


@click.command()
@click.option("--original", "original", required=True,
              help="Reference model: an .onnx file, a checkpoint/run DIR, or a zoo MODEL name.")
@click.option("--compressed", "compressed", required=True,
              help="Model judged against it: an .onnx file, a checkpoint DIR, or a zoo MODEL name.")
@click.option("--data", default=None, help="Dataset for accuracy (digits, cifar10[:DIR], imagenet:DIR, …).")
@click.option("--weights", default="default", show_default=True, help="Weights for zoo MODEL names.")
@num_classes_option
@validate_options
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("validate"),
              show_default=True, help="Report folder: report.json, report.md, plots, exported ONNX; appears whole.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def validate(original: str, compressed: str, data: str | None, weights: str, num_classes: int | None, out: Path,
             overwrite: bool, quiet: bool, **kw) -> None:
    """Compare two models: accuracy, parity, latency per backend; write a report; apply gates (exit 3)."""
    from .. import pipeline
    from .._io import check_out_dir

    opts = validate_kwargs(kw)
    check_out_dir(out, overwrite=overwrite)
    pipeline.check_backends(opts["backends"])
    orig = pipeline.resolve(original, label="original", weights=weights, num_classes=num_classes)
    comp = pipeline.resolve(compressed, label="compressed", weights=weights, num_classes=num_classes)
    pipeline.validate(orig, comp, out, overwrite=overwrite, data=data, progress=not quiet, **opts)
    click.echo(f"report: {out / 'report.md'}")


@click.command("compress-and-export")
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(FORMAT_CHOICES, case_sensitive=False),
              help="Decomposition format (see tdexport compress --help).")
@click.option("--rank", default="vbmf", show_default=True, help=RANK_HELP)
@weights_option("default")
@num_classes_option
@click.option("--data", default=None, help="Dataset for fine-tuning and accuracy (digits, cifar10[:DIR], …).")
@layer_selection_options
@method_options
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
@validate_options
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/MODEL-FORMAT]; built in OUT.partial and renamed when complete.")
@overwrite_option
@click.option("--resume", is_flag=True,
              help="Continue a run that failed or was interrupted after compression; its work is in OUT.partial "
                   "(compression settings come from its plan.json; fine-tuning resumes exactly).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def compress_and_export(model: str, fmt: str, rank: str, weights: str, num_classes: int | None, data: str | None,
                        finetune_epochs: int, lr: float, batch_size: int, distill: str | None, device: str,
                        seed: int, out: Path | None, overwrite: bool, resume: bool, quiet: bool, **kw) -> None:
    """Compress MODEL, optionally fine-tune, export both models to ONNX, validate, and report.

    Layer decisions are measured on --target, by default the first --backend at the largest --batch-sizes
    (--target none: no measurement): a layer whose factor chain is not faster there stays dense.

    The run folder holds plan.json, compressed.safetensors, original.onnx, compressed.onnx, report.json,
    report.md, plots and run.json. Gates (--max-acc-drop, --min-speedup, --max-parity-err) exit 3 after
    the report. Backends, data, class counts and --out are checked before anything is compressed.
    """
    from ..compress_and_export import compress_and_export as run_flow
    from ..ranks import parse_rank_rule

    parse_rank_rule(rank)
    methods = method_kwargs(kw)
    selection = selection_kwargs(kw)
    selection.update(methods)
    opts = validate_kwargs(kw)
    if selection["target"] is None:
        del selection["target"]  # the flow's default: first backend at the largest batch
    else:
        selection["target"] = selection["target"] or None
    if not quiet:
        selection["say"] = click.echo
    out = out or Path("runs") / run_name(model, fmt, methods["tt_type"])
    cfg = None
    if finetune_epochs:
        from ..train import TrainConfig

        cfg = TrainConfig(epochs=finetune_epochs, lr=lr, batch_size=batch_size, distill=distill, device=device,
                          seed=seed)
        cfg.validate()
    run_flow(model, out, format=fmt, rank=rank, weights=weights, num_classes=num_classes, data=data, finetune_cfg=cfg,
             compress_options=selection, overwrite=overwrite, resume=resume, progress=not quiet, **opts)
    click.echo(f"run folder: {out}  (report: {out / 'report.md'})")

