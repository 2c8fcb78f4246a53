"""Training commands: ``train`` (dense baseline), ``finetune`` (a compressed checkpoint), ``admm``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import RANK_HELP, num_classes_option, run_kwargs, train_config, training_options, weights_option

__all__ = ["train", "finetune", "admm"]


def _report_training(metrics: dict, out: Path) -> None:
    last = metrics.get("final_test_top1")
    if last is not None:
        click.echo(f"final test top-1 {last:.2f}%  ({len(metrics['epochs'])} epochs); saved in {out}")


@click.command()
@click.argument("model")
@weights_option("random")
@num_classes_option
@training_options
def train(model: str, weights: str, num_classes: int | None, **kw) -> None:
    """Train MODEL (dense baseline) on --data; defaults: 15 epochs, onecycle, peak lr 0.1.

    Writes OUT/model.safetensors + OUT/model.json (usable as --weights OUT) and OUT/metrics.json.
    """
    from ..train import run

    cfg = train_config(kw, epochs=15, lr=0.1)
    run_kw = run_kwargs(kw)
    metrics = run.train(model, cfg=cfg, weights=weights, num_classes=num_classes, **run_kw)
    _report_training(metrics, run_kw["out"])


@click.command()
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
@training_options
def finetune(directory: Path, distill: str | None, teacher: str | None, teacher_weights: str | None,
             alpha: float, tau: float, **kw) -> None:
    """Fine-tune a compressed checkpoint DIRECTORY; defaults: 4 epochs, onecycle, peak lr 0.05.

    Writes OUT/compressed.safetensors + OUT/plan.json (loadable with tdexport.load) and OUT/metrics.json.
    """
    from ..train import run

    cfg = train_config(kw, epochs=4, lr=0.05, distill=distill, alpha=alpha, tau=tau)
    run_kw = run_kwargs(kw)
    metrics = run.finetune(directory, cfg=cfg, teacher=teacher, teacher_weights=teacher_weights, **run_kw)
    if metrics.get("start_test_top1") is not None:
        click.echo(f"test top-1 before fine-tuning {metrics['start_test_top1']:.2f}%")
    _report_training(metrics, run_kw["out"])


@click.command()
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "tt", "ht2", "svd"], case_sensitive=False),
              help="Rank set projected onto, by the final decomposition's own algorithm: Tucker-2 (HOOI), TT "
                   "(TT-SVD; --tt-type general for the general TT), HT-2 or SVD (1×1 / Linear).")
@click.option("--tt-type", type=click.Choice(["special", "general"]), default="special", show_default=True,
              help="tt format: TDC's 3-core TT, or the general TT with channels split into modes (2 per axis).")
@click.option("--rank", default="ratio:0.5", show_default=True, help=RANK_HELP)
@click.option("--rho", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="ADMM penalty weight ρ in (ρ/2)‖W − Z + U‖².")
@click.option("--rho-final", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Grow ρ geometrically to this by the end [default: constant ρ].")
@click.option("--admm-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Optimizer steps between Z/U updates.")
@weights_option("random")
@num_classes_option
@training_options
def admm(model: str, fmt: str, tt_type: str, rank: str, rho: float, rho_final: float | None, admm_every: int,
         weights: str, num_classes: int | None, **kw) -> None:
    """ADMM low-rank-aware training of MODEL, then decomposition at the planned ranks.

    Writes OUT/compressed.safetensors + OUT/plan.json (ready for finetune), OUT/dense/ (trained dense
    model) and OUT/metrics.json with the projection gap per layer over time (admm_history).
    """
    from ..ranks import parse_rank_rule
    from ..train import run

    parse_rank_rule(rank)
    cfg = train_config(kw, epochs=10, lr=0.05)
    run_kw = run_kwargs(kw)
    metrics = run.admm(model, format=fmt, rank=rank, cfg=cfg, rho=rho, rho_final=rho_final,
                       admm_every=admm_every, weights=weights, num_classes=num_classes, tt_type=tt_type, **run_kw)
    if "decomposed_test_top1" in metrics:
        click.echo(f"decomposed after ADMM: test top-1 {metrics['decomposed_test_top1']:.2f}% "
                   f"(plain decomposition of the starting weights: {metrics['plain_decomposed_test_top1']:.2f}%)")
    _report_training(metrics, run_kw["out"])
