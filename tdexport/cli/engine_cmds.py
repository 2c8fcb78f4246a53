"""TensorRT command: ``build-engine`` (an ONNX model to a serialized engine plus its JSON sidecar)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError

__all__ = ["build_engine"]


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    """Parse ``--batch-sizes MIN,OPT,MAX`` (or one N for N,N,N)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected MIN,OPT,MAX as integers, got {value!r}") from None
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3:
        raise click.BadParameter(f"expected three sizes MIN,OPT,MAX (or one N), got {len(sizes)} in {value!r}")
    low, opt, high = sizes
    if not 1 <= low <= opt <= high:
        raise click.BadParameter(f"need 1 ≤ MIN ≤ OPT ≤ MAX, got {value!r}")
    return low, opt, high


@click.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .engine file to write: a plain serialized TensorRT engine (trtexec --loadEngine reads it), "
                   "plus OUT.json, the sidecar recording TensorRT version, GPU, precision, TF32, batch profile, "
                   "and the SHA-256 of the model and the engine. Both are written atomically.")
@click.option("--batch-sizes", "batch_sizes", callback=_batch_sizes, default=None, metavar="MIN,OPT,MAX",
              help="Batch profile of the input 'input': smallest, tuned-for and largest batch (one N means N,N,N). "
                   "[default: a fixed-batch model's own batch; 1,8,32 for a dynamic batch]. A fixed-batch model "
                   "only takes its own batch (exit 2 otherwise).")
@click.option("--workspace-gib", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Limit of the builder's scratch GPU memory, GiB; tactics needing more are skipped.")
@click.option("--timing-cache", "timing_cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT kernel timing cache file: read if it exists (one from another TensorRT version or GPU "
                   "is replaced), updated after the build. Speeds up rebuilds on the same GPU.")
@click.option("--opt-level", "opt_level", type=click.IntRange(0, 5), default=None,
              help="Builder optimization level 0..5 [default: TensorRT's, 3]; higher searches longer for faster "
                   "kernels.")
@click.option("--tf32", is_flag=True,
              help="Allow TF32 for float32 convolutions and matmuls (faster on Ampere and newer GPUs, ~1e-3 "
                   "relative error). Off by default, so an fp32 model gives fp32 results.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (refused otherwise, exit 2).")
def build_engine(model: Path, out: Path, batch_sizes: tuple[int, int, int] | None, workspace_gib: float,
                 timing_cache: Path | None, opt_level: int | None, tf32: bool, overwrite: bool) -> None:
    """Build a TensorRT engine from MODEL.onnx (input 'input', only its batch may be dynamic).

    The network is strongly typed: the engine runs the precision the ONNX graph has (fp32 stays fp32; cast
    the model to fp16 or insert Q/DQ nodes beforehand for fp16 / int8). Build on the GPU and TensorRT version
    that will run the engine: it loads nowhere else.

    Exit codes: 2 bad input (checked before TensorRT is touched), 4 tensorrt or a CUDA GPU missing, 1 the
    build failed (TensorRT's messages are shown).
    """
    from .. import engine

    if model.suffix.lower() != ".onnx":
        raise UsageError(f"MODEL must be an .onnx file, got {model}")
    if not model.is_file():
        raise UsageError(f"ONNX model not found: {model}")
    if out.suffix != ".engine":
        raise UsageError(f"--out must name an .engine file, got {out}")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    if timing_cache is not None and timing_cache.is_dir():
        raise UsageError(f"--timing-cache {timing_cache} is a folder; name a file")
    low, opt, high = batch_sizes or (None, None, None)
    # A bad model or profile is refused here, before tensorrt is imported.
    engine.resolve_profile(engine.inspect_onnx(model), low, opt, high)
    path = engine.build_engine(model, out, min_batch=low, opt_batch=opt, max_batch=high, workspace_gib=workspace_gib,
                               timing_cache=timing_cache, opt_level=opt_level, tf32=tf32)
    info = engine.read_sidecar(path) or {}
    shapes = info.get("profile", {}).get("input", {})
    click.echo(f"wrote {path} (TensorRT {info.get('tensorrt_version')}, {info.get('gpu_name')} "
               f"sm {info.get('compute_capability')}, {info.get('precision')}, TF32 {'on' if tf32 else 'off'})")
    click.echo(f"profile input: min {shapes.get('min')} opt {shapes.get('opt')} max {shapes.get('max')}")
    click.echo(f"sidecar: {engine.sidecar_path(path)}")
    if timing_cache is not None:
        click.echo(f"timing cache: {timing_cache}")
