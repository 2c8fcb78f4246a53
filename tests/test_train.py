"""Training on the embedded digits data (CPU): baseline, collapse and recovery, distillation, ADMM, resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import tdexport
from tdexport.train.config import TrainConfig, lr_at

pytestmark = pytest.mark.slow


def test_baseline_reaches_95(baseline):
    out, metrics = baseline
    assert metrics["final_test_top1"] >= 95.0
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 7))
    assert all({"epoch", "train_loss", "test_top1"} <= set(e) for e in metrics["epochs"])
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    model = tdexport.load(out)  # a dense run directory loads like a compressed one
    assert model.fc.out_features == 10
    assert (out / "train.log").read_text().count("epoch") == 6


@pytest.fixture(scope="module")
def compressed(baseline, tmp_path_factory, cli):
    base, _ = baseline
    out = tmp_path_factory.mktemp("cmp") / "r20-tk"
    assert cli(["compress", "resnet20", "--weights", str(base), "--format", "tucker", "--rank", "ratio:0.5",
                 "--out", str(out), "-q"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    return out, plan


@pytest.mark.parametrize("distill", [None, "soft"])
def test_finetune_recovers_within_one_point(baseline, compressed, tmp_path, distill, cli):
    _, base_metrics = baseline
    cdir, plan = compressed
    assert plan["totals"]["macs_before"] / plan["totals"]["macs_after"] == pytest.approx(2.6, abs=0.2)
    args = ["finetune", str(cdir), "--data", "digits", "--out", str(tmp_path / "ft"), "-q"]
    if distill:
        args += ["--distill", distill]
    assert cli(args) == 0
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert len(m["epochs"]) == 4  # the default schedule, no flags
    assert m["start_test_top1"] < base_metrics["final_test_top1"] - 20  # decomposition alone collapses
    assert m["final_test_top1"] >= base_metrics["final_test_top1"] - 1.0
    model = tdexport.load(tmp_path / "ft")
    assert json.loads((tmp_path / "ft" / "plan.json").read_text())["layers"] == plan["layers"]
    assert sum(p.numel() for p in model.parameters()) == plan["totals"]["params_after"]


def test_admm_shrinks_gap_and_beats_plain_decomposition(baseline, tmp_path, cli):
    base, _ = baseline
    out = tmp_path / "admm"
    assert cli(["admm", "resnet20", "--weights", str(base), "--format", "tucker", "--rank", "ratio:0.5",
                 "--data", "digits", "--epochs", "6", "--lr", "0.01", "--sched", "step", "--decay-epochs", "100",
                 "--rho", "2", "--admm-every", "22", "--out", str(out), "-q"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    gaps = [h["mean_gap"] for h in m["admm_history"]]
    assert len(gaps) >= 6
    half = len(gaps) // 2
    assert sum(gaps[half:]) / (len(gaps) - half) < sum(gaps[:half]) / half  # lower on average over time
    assert gaps[-1] < gaps[0]
    assert m["decomposed_test_top1"] > m["plain_decomposed_test_top1"]
    model = tdexport.load(out)
    assert isinstance(model.layer2[0].conv1, torch.nn.Sequential)
    assert (out / "dense" / "model.safetensors").is_file()


def test_resume_after_interrupt_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base_args = [sys.executable, "-m", "tdexport", "train", "resnet20", "--data", "digits", "--epochs", "3",
                 "--batch-size", "128", "-q"]
    full = tmp_path / "full"
    subprocess.run([*base_args, "--out", str(full)], check=True, env=env, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*base_args, "--out", str(cut)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # interrupt (Ctrl-C) once epoch 1 is on disk, during epoch 2
        metrics = cut / "metrics.json"
        if metrics.is_file() and json.loads(metrics.read_text())["epochs"]:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    done = json.loads((cut / "metrics.json").read_text())["epochs"]
    assert 1 <= len(done) < 3
    subprocess.run([*base_args, "--out", str(cut), "--resume"], check=True, env=env, capture_output=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, cut))
    assert [e["train_loss"] for e in ma["epochs"]] == [e["train_loss"] for e in mb["epochs"]]


def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "tdexport", "train", "resnet20", "--data", "digits", "--epochs", "1", "--device", "cpu",
           "--out", str(out), "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["epochs"]) == 1 and m["final_test_top1"] > 30.0
    model = tdexport.load(out)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_existing_run_needs_resume_and_cuda_missing_exits_4(baseline, capsys, cli):
    out, _ = baseline
    assert cli(["train", "resnet20", "--epochs", "1", "--out", str(out), "-q"]) == 2
    assert "--resume" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli(["train", "resnet20", "--epochs", "1", "--device", "cuda", "--out", str(out / "x")]) == 4
        assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("sched", ["onecycle", "cosine", "step"])
def test_lr_schedules(sched):
    cfg = TrainConfig(epochs=10, lr=0.1, sched=sched, warmup_epochs=1 if sched != "onecycle" else 0,
                      decay_epochs=3, decay_rate=0.5)
    lrs = [lr_at(cfg, s, 10) for s in range(100)]
    assert max(lrs) == pytest.approx(0.1, rel=1e-2)
    if sched == "onecycle":
        assert lrs[0] == pytest.approx(0.1 / 25, rel=1e-2) and lrs[-1] < 1e-3 and lrs.index(max(lrs)) == 30
    elif sched == "cosine":
        assert lrs[0] == pytest.approx(0.01) and lrs[-1] < 1e-3
    else:
        assert lrs[35] == pytest.approx(0.05) and lrs[65] == pytest.approx(0.025)
