"""Sweep: compress → save → reload → ONNX export for every torchvision classifier (prints a table).

Per model, random weights at the model's own input resolution: `tdexport.compress` (Tucker-2, rank
ratio:0.5 by default), `tdexport.save`, `tdexport.load`, the reloaded model's outputs against the in-memory
compressed model's (must be equal or within 1e-6), then `tdexport.export.onnx.export_onnx` of the reloaded
model (or of the in-memory one when reloading failed), which checks parity against torch on ONNX Runtime
CPU. Each model runs in its own subprocess, so a crash, an out-of-memory kill or a timeout ends that row
only; the exit code is 0 when every model that ran passed (models skipped by --skip-large do not count).

This is a tool, not a test: it takes hours for all 80 models (vit_h_14 and regnet_y_128gf need several GB).

Usage: python tools/sweep_zoo.py [--models 'resnet*'] [--skip-large 100] [--timeout 1800] [--out sweep.md]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _table import table

_RESULT, _STAGE = "SWEEP_RESULT ", "SWEEP_STAGE "
#: Reloading rebuilds the same modules with the same weights, so outputs should match to the bit;
#: 1e-6 leaves room for nothing but the order of float additions.
_RELOAD_TOL = 1e-6
_HEAD = ["model", "params M before→after", "MACs ratio", "decomposed/kept", "logits std", "reload max diff",
         "export", "parity rel L2", "s", "error"]


def _first_line(err: BaseException, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


def _torchvision_names(patterns: str) -> list[str]:
    import torchvision.models as tvm

    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    return [n for n in tvm.list_models(module=tvm) if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def _param_count(name: str) -> int:
    """Parameters of torchvision model ``name`` without building it in memory (weights metadata, else meta device)."""
    import torch
    import torchvision.models as tvm

    try:
        return int(tvm.get_model_weights(name).DEFAULT.meta["num_params"])
    except (KeyError, ValueError, AttributeError):
        with torch.device("meta"):
            return sum(p.numel() for p in tvm.get_model(name, weights=None).parameters())


# ---------------------------------------------------------------------------------------------- worker


def _informative(model: Any, input_shape: list[int]) -> Any:
    """Make random-init logits depend on the input: fill all-zero Linear weights, calibrate BatchNorm.

    torchvision zero-initialises some heads (ViT), and some inits with eval-mode BatchNorm shrink the features
    to ~1e-11 (GoogLeNet): the reload and parity checks then compare constants.
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average: one batch sets the statistics exactly
            model.train()
            model(torch.randn(4, *input_shape, generator=generator))
    return model.eval()


def _stage(result: dict[str, Any], name: str) -> None:
    result["stage"] = name
    print(_STAGE + name, flush=True)  # the parent reports the last stage reached when the worker dies


def _worker(name: str, fmt: str, rank: str, opset: int, max_parity_err: float, calibrate: bool) -> dict[str, Any]:
    """Run every stage for ``name`` in this process; returns the row's data (never raises)."""
    import torch

    import tdexport
    from tdexport.export.onnx import export_onnx
    from tdexport.zoo import model_info

    result: dict[str, Any] = {"model": name, "errors": [], "seconds": {}}
    start = time.perf_counter()
    compressed = loaded = None

    def timed(stage: str, fn: Any) -> Any:
        _stage(result, stage)
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as err:  # record and go on: later stages show whether the failure is isolated
            result["errors"].append(f"{stage}: {_first_line(err)}")
            result.setdefault("tracebacks", []).append(traceback.format_exc())
            return None
        finally:
            result["seconds"][stage] = round(time.perf_counter() - t0, 1)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        def build_and_compress() -> Any:
            if not calibrate:
                return tdexport.compress(name, format=fmt, rank=rank, weights="random")
            shape = list(model_info(name).input_shape)
            dense = _informative(tdexport.create_model(name, weights="random"), shape)
            return tdexport.compress(dense, format=fmt, rank=rank, input_shape=shape, model_name=name)

        compressed = timed("compress", build_and_compress)
        if compressed is not None:
            plan = compressed.plan
            decided = [layer.decision for layer in plan.layers]
            result.update(totals=plan.totals, input_shape=plan.input_shape,
                          decomposed=decided.count("decomposed"), kept=decided.count("kept"))
            timed("save", lambda: tdexport.save(Path(tmp) / "ckpt", compressed))
            loaded = timed("load", lambda: tdexport.load(Path(tmp) / "ckpt"))
            x = torch.randn(2, *plan.input_shape, generator=torch.Generator().manual_seed(0))
            if loaded is not None:
                def reload_diff() -> float:
                    with torch.inference_mode():
                        reference = compressed.model.eval()(x)
                        result["logits_std"] = float(reference.std())
                        return float((loaded(x) - reference).abs().max())

                diff = timed("reload-check", reload_diff)
                result["reload_max_diff"] = diff
                if diff is not None and not diff <= _RELOAD_TOL:
                    result["errors"].append(f"reload-check: outputs differ by {diff:.3g} > {_RELOAD_TOL:g}")
            target = loaded if loaded is not None else compressed.model
            exported = timed("export", lambda: export_onnx(target, Path(tmp) / "model.onnx",
                                                           input_shape=tuple(plan.input_shape), opset=opset,
                                                           max_parity_err=max_parity_err))
            if exported is not None:
                result.update(exporter=exported.exporter, simplified=exported.simplified,
                              parity_rel_l2=exported.parity.rel_l2_err, export_notes=list(exported.notes),
                              exported_model="reloaded" if loaded is not None else "in-memory")
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    result["ok"] = not result["errors"]
    return result


# ---------------------------------------------------------------------------------------------- parent


def _run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--format", args.format, "--rank", args.rank,
           "--opset", str(args.opset), "--max-parity-err", str(args.max_parity_err)]
    if args.calibrate:
        cmd.append("--calibrate")
    start = time.perf_counter()
    timeout = args.timeout if args.timeout and args.timeout > 0 else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # subprocess.run has already killed the worker
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err, code = f"timed out after {timeout:g} s", None
    for line in reversed(out.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    stages = [ln[len(_STAGE):] for ln in out.splitlines() if ln.startswith(_STAGE)]
    stage = stages[-1] if stages else "start"
    if code is None:
        why = err
    elif code < 0:
        why = f"worker killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    else:
        tail = [ln for ln in err.splitlines() if ln.strip()]
        why = f"worker exited {code}: {tail[-1][:200] if tail else 'no output'}"
    return {"model": name, "ok": False, "errors": [f"{stage}: {why}"],
            "total_seconds": round(time.perf_counter() - start, 1)}


def _fmt(value: Any, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _row(r: dict[str, Any]) -> list[str]:
    totals = r.get("totals")
    params = (f"{totals['params_before'] / 1e6:.2f}→{totals['params_after'] / 1e6:.2f}" if totals else "–")
    macs = (f"{totals['macs_before'] / totals['macs_after']:.2f}×" if totals and totals["macs_after"] else "–")
    layers = f"{r['decomposed']}/{r['kept']}" if "decomposed" in r else "–"
    if "exporter" in r:
        export = f"ok ({r['exporter']}{', slim' if r['simplified'] else ''})"
    elif any(e.startswith("export:") for e in r.get("errors", [])):
        export = "FAIL"
    else:
        export = "–"
    if r.get("skipped"):
        return [r["model"], params, "–", "–", "–", "–", "–", "–", "–", r["skipped"]]
    return [r["model"], params, macs, layers, _fmt(r.get("logits_std"), ".2g"), _fmt(r.get("reload_max_diff"), ".2g"),
            export,
            _fmt(r.get("parity_rel_l2"), ".2g"), _fmt(r.get("total_seconds"), ".0f"),
            " | ".join(r.get("errors", [])) or ("" if r.get("ok") else "failed")]


def _markdown(rows: list[list[str]]) -> str:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(rows[0]), "|" + "---|" * len(rows[0]), *(cells(r) for r in rows[1:])]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="*", help="comma-separated fnmatch globs of torchvision classifiers [*]")
    ap.add_argument("--format", default="tucker", help="decomposition format [tucker]")
    ap.add_argument("--rank", default="ratio:0.5", help="rank rule [ratio:0.5]")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset, as `tdexport export` uses [18]")
    ap.add_argument("--max-parity-err", type=float, default=1e-4, help="ONNX parity limit, relative L2 [1e-4]")
    ap.add_argument("--calibrate", action="store_true",
                    help="make random weights informative (zero Linear weights filled, BatchNorm statistics "
                         "from one batch) and compress the module; default: tdexport.compress(name, weights='random')")
    ap.add_argument("--skip-large", type=float, default=None, metavar="N",
                    help="skip models with more than N million parameters")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per model, 0 for none [3600]")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as Markdown to this file")
    ap.add_argument("--json", type=Path, default=None, help="also write every row's data (with tracebacks)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        row = _worker(args.worker, args.format, args.rank, args.opset, args.max_parity_err, args.calibrate)
        print(_RESULT + json.dumps(row), flush=True)
        return 0

    names = _torchvision_names(args.models)
    if not names:
        print(f"no torchvision classifier matches {args.models!r}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    for i, name in enumerate(names, 1):
        n_params = _param_count(name)
        if args.skip_large is not None and n_params > args.skip_large * 1e6:
            r: dict[str, Any] = {"model": name, "ok": None, "errors": [],
                                 "skipped": f"skipped: {n_params / 1e6:.0f}M params > {args.skip_large:g}M"}
        else:
            print(f"[{i}/{len(names)}] {name} ({n_params / 1e6:.1f}M params) ...", file=sys.stderr, flush=True)
            r = _run_one(name, args)
        results.append(r)
        print("  ".join(_row(r)), flush=True)
    rows = [_HEAD, *(_row(r) for r in results)]
    ran = [r for r in results if not r.get("skipped")]
    failed = [r for r in ran if not r["ok"]]
    summary = (f"{len(ran) - len(failed)}/{len(ran)} passed, {len(results) - len(ran)} skipped; "
               f"format {args.format}, rank {args.rank}, random weights{' (calibrated)' if args.calibrate else ''}, "
               "model input resolution; logits std: of the compressed model's outputs (0: checks compare constants)")
    print("\n" + table(rows) + "\n\n" + summary)
    notes = [f"- {r['model']}: {'; '.join(r['export_notes'])}" for r in results if r.get("export_notes")]
    if notes:
        print("\nexport notes (fallbacks, dropped simplifications):\n" + "\n".join(notes))
    if args.out:
        extra = "\n\nExport notes (fallbacks, dropped simplifications):\n\n" + "\n".join(notes) if notes else ""
        args.out.write_text(_markdown(rows) + "\n" + summary + extra + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by the workers: keep their stderr short
    sys.exit(main())
