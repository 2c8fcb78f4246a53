"""Recipes: schema errors (exit 2 naming file and key), extends, overrides, list / show, dry run, and a full run."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from threads import one_thread

from tdexport.errors import UsageError
from tdexport.recipes import STATE_FILE, default_root, dry_run, list_recipes, load_recipe, run_recipe
from tdexport.recipes.planning import data_spec, train_config

TINY = """
description: "ResNet-20 Tucker-2 on digits (test)"
source:
  seed: tdc
  paper: "A test paper"
  table: "Table 9"
model:
  name: resnet20
  weights: random
data:
  dataset: digits
compression:
  format: tucker
  rank: "ratio:0.5"
finetune:
  epochs: 1
  lr: 0.01
  batch_size: 64
  device: cpu
export:
  backends: [ort-cpu]
  batch_sizes: [1]
published:
  top1: 91.5
  baseline_top1: 92.0
  params_ratio: 3.0
  macs_ratio: 2.5
  note: "test numbers"
"""


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Plans and the tiny fine-tune run with one torch thread (see `threads.one_thread`)."""
    with one_thread():
        yield


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def tiny(**changes) -> str:
    """TINY with top-level sections replaced (a value None deletes the key)."""
    data = yaml.safe_load(TINY)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


def run(cli, capsys, *args):
    code = cli(["recipe", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------- schema errors


@pytest.mark.parametrize("mutate, key, accepts", [
    (lambda d: d["finetune"].update(lrr=0.1), "finetune.lrr", "did you mean lr?"),
    (lambda d: d["finetune"].update(lr="fast"), "finetune.lr", "a number > 0"),
    (lambda d: d["compression"].update(format="tucker3"), "compression.format", "one of none, tucker, tt, cp"),
    (lambda d: d.pop("published"), "published", "a mapping with keys top1"),
    (lambda d: d["model"].pop("name"), "model.name", "a non-empty string"),
    (lambda d: d["export"].update(batch_sizes=[1, 0]), "export.batch_sizes[1]", "an integer ≥ 1"),
    (lambda d: d["compression"].update(rank="ratio:2"), "compression.rank", "ratio takes a value in (0, 1]"),
    (lambda d: d.update(colour="red"), "colour", "keys extends, description"),
    (lambda d: d["source"].update(seed="nobody"), "source.seed", "one of tdc, reordering, vbmf"),
    (lambda d: d["compression"].update(tt_type="general"), "compression.tt_type", "general only with format tt"),
    (lambda d: d["model"].update(name="resnet21"), "model.name", "did you mean"),
])
def test_schema_violation_exits_2_naming_file_key_and_accepted(tmp_path, cli, capsys, mutate, key, accepts):
    data = yaml.safe_load(TINY)
    mutate(data)
    path = write(tmp_path, "bad", yaml.safe_dump(data))
    code, _, err = run(cli, capsys, "run", path, "--dry-run")
    assert code == 2
    assert str(path) in err and f" {key}: " in err and accepts in err, err


def test_extends_chain_of_two_names_both_files(tmp_path, cli, capsys):
    write(tmp_path, "grand", tiny())
    write(tmp_path, "parent", "extends: grand\ndescription: parent\n")
    child = write(tmp_path, "child", "extends: parent\ndescription: child\n")
    code, _, err = run(cli, capsys, "show", "child", "--recipes-dir", tmp_path)
    assert code == 2
    assert str(child) in err and str(tmp_path / "parent.yaml") in err and "one level" in err


def test_extends_missing_names_file_and_key(tmp_path, cli, capsys):
    write(tmp_path, "base-one", tiny())
    child = write(tmp_path, "child", "extends: base-onne\ndescription: child\n")
    code, _, err = run(cli, capsys, "run", "child", "--recipes-dir", tmp_path, "--dry-run")
    assert code == 2
    assert str(child) in err and "extends:" in err and "base-onne" in err and "did you mean base-one" in err


def test_error_in_base_names_the_base_and_overrides_name_themselves(tmp_path):
    data = yaml.safe_load(TINY)
    data["finetune"]["momentum"] = "high"
    base = write(tmp_path, "base", yaml.safe_dump(data))
    write(tmp_path, "child", "extends: base\ndescription: child\n")
    with pytest.raises(UsageError, match=r"from its base .*base\.yaml.*finetune\.momentum: got 'high'") as info:
        load_recipe("child", root=tmp_path)
    assert str(base) in str(info.value)
    write(tmp_path, "ok", TINY)
    with pytest.raises(UsageError, match=r"override 'finetune\.epochs=0': finetune\.epochs: got 0 \(an integer\); "
                                         r"accepted: an integer ≥ 1"):
        load_recipe("ok", root=tmp_path, overrides=["finetune.epochs=0"])


def test_yaml_problems_are_usage_errors(tmp_path):
    write(tmp_path, "dup", TINY + "description: again\n")
    with pytest.raises(UsageError, match=r"dup\.yaml: not valid YAML .*duplicate key 'description'"):
        load_recipe("dup", root=tmp_path)
    write(tmp_path, "list", "- a\n- b\n")
    with pytest.raises(UsageError, match=r"list\.yaml: a recipe is a YAML mapping"):
        load_recipe("list", root=tmp_path)
    with pytest.raises(UsageError, match=r"no recipe 'nosuch' in .*dup"):
        load_recipe("nosuch", root=tmp_path)


def test_partial_base_is_listed_but_cannot_run(tmp_path, cli, capsys):
    write(tmp_path, "base", tiny(published=None, description=None))
    write(tmp_path, "child", "extends: base\ndescription: child\npublished: {top1: 90}\n")
    names = {r.name: r for r in list_recipes(tmp_path)}
    assert names["base"].missing == ("description", "published") and names["child"].runnable
    code, _, err = run(cli, capsys, "run", "base", "--recipes-dir", tmp_path, "--dry-run")
    assert code == 2 and "base.yaml: description: missing required key (also missing: published)" in err
    write(tmp_path, "orphan", tiny(published=None))  # partial but extended by nobody: an error
    with pytest.raises(UsageError, match=r"orphan\.yaml: published: missing required key"):
        list_recipes(tmp_path)


# ---------------------------------------------------------------------------------------------- merging


def test_extends_merges_mappings_and_replaces_lists_scalars_and_null(tmp_path):
    base = yaml.safe_load(TINY)
    base["admm"] = {"epochs": 3, "rho": 0.01}
    base["export"] = {"backends": ["ort-cpu", "torch"], "batch_sizes": [1, 8, 32], "precision": ["fp32", "fp16"]}
    write(tmp_path, "base", yaml.safe_dump(base))
    write(tmp_path, "child", """
        extends: base
        description: child
        finetune: {epochs: 2}
        export: {batch_sizes: [4]}
        admm: null
        published: {top1: 80.0}
    """)
    r = load_recipe("child", root=tmp_path)
    assert r.base == tmp_path / "base.yaml" and r.name == "child"
    assert r.merged["finetune"] == {"epochs": 2, "lr": 0.01, "batch_size": 64, "device": "cpu"}
    assert r.merged["export"] == {"backends": ["ort-cpu", "torch"], "batch_sizes": [4], "precision": ["fp32", "fp16"]}
    assert r.merged["published"] == {**base["published"], "top1": 80.0}
    assert r.merged["admm"] is None and r.data["admm"] is None
    assert r.merged["description"] == "child" and r.merged["source"] == base["source"]
    assert "extends" not in r.merged
    # defaults fill what neither file says: the schema's shown values, then TrainConfig's own
    ft = r.data["finetune"]
    assert (ft["epochs"], ft["lr"], ft["sched"], ft["tau"], ft["optimizer"], ft["devices"]) == (2, 0.01, "cosine", 4.0,
                                                                                                "sgd", 1)
    assert ft["decay_rate"] == 0.1 and r.data["validate"] == {"max_acc_drop": None, "min_speedup": None,
                                                              "max_parity_err": 0.0001}
    assert r.data["compression"]["tt_type"] == "special" and r.data["model"]["num_classes"] is None


def test_overrides_are_yaml_dotted_and_validated(tmp_path):
    write(tmp_path, "t", tiny(finetune=None))
    r = load_recipe("t", root=tmp_path, overrides=["finetune.epochs=2", "compression.rank=ratio:0.4",
                                                   "export.precision=[fp32,fp16]", "finetune.lr=1e-3",
                                                   "validate.min_speedup=1.2", "model.num_classes=10"])
    assert r.data["finetune"]["epochs"] == 2 and r.data["finetune"]["lr"] == 0.001  # a section the file lacked
    assert r.data["compression"]["rank"] == "ratio:0.4" and r.data["export"]["precision"] == ["fp32", "fp16"]
    assert r.data["validate"]["min_speedup"] == 1.2 and r.data["model"]["num_classes"] == 10
    assert r.overrides == ("finetune.epochs=2", "compression.rank=ratio:0.4", "export.precision=[fp32,fp16]",
                           "finetune.lr=1e-3", "validate.min_speedup=1.2", "model.num_classes=10")
    assert load_recipe("t", root=tmp_path, overrides=["compression.rank=8"]).data["compression"]["rank"] == "8"
    for bad, message in [("finetune.epochs", "expected KEY=VALUE"), ("model.name.x=1", "model.name is not a mapping"),
                         ("extends=other", "extends cannot be overridden"), ("a..b=1", "expected KEY=VALUE"),
                         ("export.precision=[fp32", "the value is not YAML"),
                         ("export.precision=fp16", "export.precision: got 'fp16' (a string); accepted: a non-empty "
                                                   "list of one of fp32, fp16, int8")]:
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_recipe("t", root=tmp_path, overrides=[bad])


def test_data_spec_and_train_configs(tmp_path):
    write(tmp_path, "t", TINY)
    r = load_recipe("t", root=tmp_path)
    assert data_spec(r) == "digits" and data_spec(r, "/ignored") == "digits"
    cifar = load_recipe("t", root=tmp_path, overrides=["data.dataset=cifar10"])
    assert data_spec(cifar) == "cifar10" and data_spec(cifar, tmp_path) == f"cifar10:{tmp_path}"
    rooted = load_recipe("t", root=tmp_path, overrides=["data.dataset=imagenet", "data.root=/data/in1k"])
    assert data_spec(rooted) == "imagenet:/data/in1k" and data_spec(rooted, "/x") == "imagenet:/x"
    with pytest.raises(UsageError, match=r"t\.yaml: data\.root: imagenet needs its folder: pass --data-root"):
        data_spec(load_recipe("t", root=tmp_path, overrides=["data.dataset=imagenet"]))
    cfg = train_config(r, "finetune")
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.sched, cfg.device, cfg.tau) == (1, 0.01, 64, "cosine", "cpu", 4.0)
    assert train_config(r, "admm") is None
    admm = train_config(load_recipe("t", root=tmp_path, overrides=["admm={epochs: 2}"]), "admm")
    assert (admm.epochs, admm.lr, admm.sched) == (2, 0.01, "step")


def test_admm_and_distill_constraints(tmp_path):
    write(tmp_path, "t", TINY)
    with pytest.raises(UsageError, match=r"t\.yaml: override 'admm=\{\}': admm: an ADMM stage cannot project onto "
                                         r"format cp"):
        load_recipe("t", root=tmp_path, overrides=["compression.format=cp", "admm={}"])
    with pytest.raises(UsageError, match=r"finetune\.distill: distillation needs a trained teacher"):
        load_recipe("t", root=tmp_path, overrides=["finetune.distill=soft"])


# ---------------------------------------------------------------------------------------------- CLI list / show


def test_list_and_show(tmp_path, cli, capsys, monkeypatch):
    write(tmp_path, "r20-digits", TINY)
    write(tmp_path, "r20-digits-tt", "extends: r20-digits\ndescription: TT\ncompression: {format: tt}\n"
                                     "published: {top1: 88.25, storage_ratio: 4}\n")
    code, out, _ = run(cli, capsys, "list", "--recipes-dir", tmp_path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "model", "dataset", "method", "top-1", "%", "params", "MACs", "storage"]
    assert lines[2].split() == ["r20-digits", "resnet20", "digits", "tucker", "ratio:0.5", "91.50", "3.00x", "2.50x",
                                "-"]
    assert lines[3].split() == ["r20-digits-tt", "resnet20", "digits", "tt", "ratio:0.5", "88.25", "3.00x", "2.50x",
                                "4.00x"]
    assert f"2 recipes in {tmp_path}" in out
    monkeypatch.setenv("TDEXPORT_RECIPES", str(tmp_path))
    assert default_root() == tmp_path
    code, out, _ = run(cli, capsys, "show", "r20-digits-tt")
    assert code == 0
    assert out.startswith(f"# recipe r20-digits-tt: {tmp_path / 'r20-digits-tt.yaml'}\n"
                          f"# extends r20-digits: {tmp_path / 'r20-digits.yaml'} (merged below)\n")
    shown = yaml.safe_load(out)
    assert shown["compression"] == {"format": "tt", "rank": "ratio:0.5"} and shown["description"] == "TT"
    assert shown["published"]["top1"] == 88.25 and shown["published"]["baseline_top1"] == 92.0
    code, out, _ = run(cli, capsys, "show", "r20-digits-tt", "--resolved", "finetune.epochs=3")
    assert code == 0 and "# overrides: finetune.epochs=3" in out
    resolved = yaml.safe_load(out)
    assert resolved["compression"]["tt_type"] == "special" and resolved["finetune"]["epochs"] == 3
    assert resolved["admm"] is None and resolved["export"]["engines"] is False
    code, out, _ = run(cli, capsys, "list", "--recipes-dir", tmp_path / "empty")
    assert code == 0 and "no recipes in" in out


# ---------------------------------------------------------------------------------------------- dry run


def test_dry_run_prints_ratios_next_to_published_and_writes_nothing(tmp_path, cli, capsys, monkeypatch):
    recipes = tmp_path / "recipes"
    write(recipes, "tiny", TINY)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run(cli, capsys, "run", "tiny", "--recipes-dir", recipes, "--dry-run", "-q")
    assert code == 0, err
    summary = dry_run(load_recipe("tiny", root=recipes))
    totals = summary["plan"].totals
    params = totals["params_before"] / totals["params_after"]
    macs = totals["macs_before"] / totals["macs_after"]
    assert {k: summary["ours"][k] for k in ("params_ratio", "macs_ratio", "storage_ratio")} == \
        {"params_ratio": params, "macs_ratio": macs, "storage_ratio": None}
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    assert rows["params reduction"][-2:] == [f"{params:.2f}x", "3.00x"]
    assert rows["MACs reduction"][-2:] == [f"{macs:.2f}x", "2.50x"]
    assert rows["top-1 %"][-1] == "91.50"
    done = [e for e in summary["plan"].layers if e.decision == "decomposed"]
    factored = sum(e.macs_before for e in done) / sum(e.macs_after for e in done)
    assert rows["MACs reduction, factored layers"][-2:] == [f"{factored:.2f}x", "-"]
    assert rows["params (M)"][-2:] == [f"{totals['params_after'] / 1e6:.2f}", "-"]
    assert "stages: compress → finetune (1 epochs, lr 0.01 cosine) → export + validate (ort-cpu; fp32; batch 1)" in out
    assert "nothing written" in out and list(work.iterdir()) == []
    # --out writes the plan, its weights and the summary
    code, out, _ = run(cli, capsys, "run", "tiny", "--recipes-dir", recipes, "--dry-run", "-q", "--out", work / "plan")
    assert code == 0
    assert sorted(p.name for p in (work / "plan").iterdir()) == ["compressed.safetensors", "dry_run.json", "plan.json"]
    written = json.loads((work / "plan" / "dry_run.json").read_text())
    assert written["ours"]["params_ratio"] == params and written["published"]["params_ratio"] == 3.0


def test_dry_run_falls_back_to_random_weights_with_a_note(tmp_path, cli, capsys):
    write(tmp_path, "pub", TINY)
    # resnet20 has no published weights: the dry run plans on random ones and says why
    code, out, err = run(cli, capsys, "run", "pub", "--recipes-dir", tmp_path, "--dry-run", "-q",
                         "model.weights=default")
    assert code == 0, err
    assert "weights: random" in out and "note: model.weights 'default' unavailable (model 'resnet20' has no " \
                                       "published weights" in out
    code, _, err = run(cli, capsys, "run", "pub", "--recipes-dir", tmp_path, "--dry-run", "-q",
                       f"model.weights={tmp_path / 'missing.safetensors'}")
    assert code == 0
    with pytest.raises(UsageError, match=r"pub\.yaml: model\.weights: .*has no published weights.*override with "
                                         r"model\.weights=PATH"):
        run_recipe(load_recipe("pub", root=tmp_path, overrides=["model.weights=default"]), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_explicit_ranks_edit_the_rule_plan(tmp_path):
    write(tmp_path, "t", TINY)
    r = load_recipe("t", root=tmp_path, overrides=['compression.ranks={"layer1.0.conv1": [3, 4], "layer3.*.conv2": '
                                                   '[5, 6]}'])
    plan = dry_run(r)["plan"]
    picked = {e.name: e.ranks for e in plan.layers if e.decision == "decomposed" and e.ranks in ([3, 4], [5, 6])}
    assert picked == {"layer1.0.conv1": [3, 4], "layer3.0.conv2": [5, 6], "layer3.1.conv2": [5, 6],
                      "layer3.2.conv2": [5, 6]}
    assert plan.layer("layer1.0.conv2").ranks == [8, 8] and plan.layer("layer1.0.conv1").method == "tucker2"
    assert plan.rank_rule == "ratio:0.5 + explicit ranks (layer1.0.conv1, layer3.*.conv2)"
    only = dry_run(load_recipe("t", root=tmp_path, overrides=["compression.rank=null",
                                                              'compression.ranks={"layer2.1.conv1": [7, 9]}']))["plan"]
    assert [(e.name, e.ranks) for e in only.layers if e.decision == "decomposed"] == [("layer2.1.conv1", [7, 9])]
    for ranks, message in [('{"nomatch*": [2, 2]}', r"compression\.ranks\.nomatch\*: matches no Conv2d / Linear"),
                           ('{"layer1.0.conv1": [300, 2]}', r"compression\.ranks: .*layer1\.0\.conv1.*do not fit"),
                           ('{"conv1": [3, 2]}', r"compression\.ranks\.conv1: layer conv1 is kept dense"),
                           ('{"layer1.0.conv1": [0]}', r"compression\.ranks\.layer1\.0\.conv1: got \[0\]")]:
        with pytest.raises(UsageError, match=message):
            dry_run(load_recipe("t", root=tmp_path, overrides=[f"compression.ranks={ranks}"]))


def test_run_refuses_a_foreign_or_different_run_folder_before_working(tmp_path):
    write(tmp_path, "t", TINY)
    r = load_recipe("t", root=tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"foreign exists and is not a recipe run folder"):
        run_recipe(r, out=foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    state = {"recipe": "t", "settings": {"model": {}}, "finished": ["compress"], "stages": {}}
    (other / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"holds a run of recipe 't' with other settings \(model\.name: null → "
                                         r"\"resnet20\""):
        run_recipe(r, out=other)


# ---------------------------------------------------------------------------------------------- recipes/ folder


def _project_recipes() -> list[Path]:
    root = Path(__file__).resolve().parents[1] / "recipes"
    return sorted(p for p in root.glob("*.y*ml")) if root.is_dir() else []


def test_every_recipe_in_the_project_validates():
    files = _project_recipes()
    if not files:
        pytest.skip("recipes/ holds no recipe yet")
    recipes = list_recipes(files[0].parent)
    assert sorted(r.path.name for r in recipes) == sorted(p.name for p in files)
    for r in recipes:
        if r.runnable:
            assert r.data["description"] and r.data["model"]["name"] and r.data["published"] is not None


# every shipped recipe's dry run: tests/test_recipes_seeds.py


# ---------------------------------------------------------------------------------------------- the full run


@pytest.mark.slow
def test_recipe_run_end_to_end_resumes_and_skips_finished_stages(tmp_path, cli, capsys, monkeypatch):
    recipes = tmp_path / "recipes"
    write(recipes, "tiny", TINY)
    out = tmp_path / "run"
    r = load_recipe("tiny", root=recipes)

    # 1. interrupted during fine-tuning: the compress stage is recorded as finished
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from tdexport.train import run as train_run

    real_finetune = train_run.finetune
    monkeypatch.setattr(train_run, "finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(r, out=out, progress=False)
    state = json.loads((out / STATE_FILE).read_text())
    assert state["finished"] == ["compress"] and state["recipe"] == "tiny"
    compressed_at = (out / "compress" / "plan.json").stat().st_mtime_ns
    monkeypatch.setattr(train_run, "finetune", real_finetune)

    # 2. the same command continues: compress is skipped, fine-tune, export, validate and report run
    code, stdout, err = run(cli, capsys, "run", "tiny", "--recipes-dir", recipes, "--out", out, "-q")
    assert code == 0, err
    assert (out / "compress" / "plan.json").stat().st_mtime_ns == compressed_at
    state = json.loads((out / STATE_FILE).read_text())
    assert state["finished"] == ["compress", "finetune", "export"] and state["stages"]["export"]["gates_passed"]
    for name in ("plan.json", "compressed.safetensors", "original.onnx", "compressed.onnx", "report.json", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "finetune" / "metrics.json").is_file() and not (out / "finetune" / "train_state.pt").exists()
    assert (out / "plan.json").read_bytes() == (out / "finetune" / "plan.json").read_bytes()
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    t = plan["totals"]
    pub = report["published"]
    assert pub["source"] == "A test paper, Table 9" and pub["note"] == "test numbers"
    assert pub["metrics"]["params_ratio"]["published"] == 3.0
    assert pub["metrics"]["params_ratio"]["ours"] == pytest.approx(t["params_before"] / t["params_after"])
    assert pub["metrics"]["macs_ratio"]["ours"] == pytest.approx(t["macs_before"] / t["macs_after"])
    acc = report["accuracy"]["ort-cpu"]
    assert pub["metrics"]["top1"] == {"published": 91.5, "ours": acc["compressed"]["top1"],
                                      "difference": pytest.approx(acc["compressed"]["top1"] - 91.5)}
    assert pub["metrics"]["baseline_top1"]["ours"] == acc["original"]["top1"]
    assert pub["accuracy_from"] == "ort-cpu on digits (n=360)"
    assert "## Published vs ours" in (out / "report.md").read_text()
    assert "published vs ours:" in stdout and "params reduction  3.00x" in stdout

    # 3. a rerun skips every stage; changed settings are refused
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, stdout, err = run(cli, capsys, "run", "tiny", "--recipes-dir", recipes, "--out", out)
    assert code == 0 and "every stage is finished" in err
    assert {p: p.stat().st_mtime_ns for p in before} == before
    code, _, err = run(cli, capsys, "run", "tiny", "--recipes-dir", recipes, "--out", out, "finetune.epochs=2")
    assert code == 2 and "finetune.epochs: 1 → 2" in err


def test_report_published_block_beside_ours():
    from tdexport.validate.markdown import published_table, render_markdown
    from tdexport.validate.report import build_report

    accuracy = {"ort-cpu": {"original": {"top1": 93.0, "top5": 99.0, "samples": 100},
                            "compressed": {"top1": 92.5, "top5": 98.5, "samples": 100}, "dataset": "cifar10"}}
    published = {"top1": 92.0, "baseline_top1": 93.25, "params_ratio": 3.0, "macs_ratio": None, "note": "n",
                 "source": "Paper, Table 2"}
    report = build_report(params=(300, 100), macs=(900, 400), accuracy=accuracy, published=published)
    block = report["published"]
    assert block["source"] == "Paper, Table 2" and block["note"] == "n"
    assert block["accuracy_from"] == "ort-cpu on cifar10 (n=100)"
    assert block["metrics"]["top1"] == {"published": 92.0, "ours": 92.5, "difference": 0.5}
    assert block["metrics"]["baseline_top1"] == {"published": 93.25, "ours": 93.0, "difference": -0.25}
    assert block["metrics"]["params_ratio"] == {"published": 3.0, "ours": 3.0, "difference": 0.0}
    assert block["metrics"]["macs_ratio"] == {"published": None, "ours": 2.25, "difference": None}
    assert block["metrics"]["storage_ratio"] == {"published": None, "ours": None, "difference": None}
    assert "published" not in build_report(params=(3, 1))
    text = published_table(report)
    assert "top-1 %           92.00      92.50  +0.50 pt" in text and "MACs reduction    -          2.25x  -" in text
    assert "storage" not in text and published_table({}) == ""
    md = render_markdown(report, [])
    assert "## Published vs ours" in md and "| params reduction | 3.00x | 3.00x | +0.00x |" in md
    assert "Published: Paper, Table 2." in md and "Note: n" in md
