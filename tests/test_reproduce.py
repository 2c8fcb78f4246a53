"""tools/reproduce.py: the comparison table of recipes (dry runs, a failing row, the full-run row from a report).

Everything here plans or fails before any work: no data, no training. The full-run columns are checked on a
report dict shaped like report.json, handed to the tool in place of `run_recipe`.
"""

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from test_recipes import TINY, write
from threads import one_thread

from tdexport.errors import GateFailed
from tdexport.recipes import dry_run, load_recipe

PROJECT = Path(__file__).resolve().parents[1]
RECIPES = PROJECT / "recipes"
EMBEDDED = ("embedded-resnet20-digits-tucker", "embedded-resnet20-digits-cp")
OUTPUTS = ("reproduce.md", "reproduce.csv", "reproduce.json", "accuracy_vs_macs.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _published() -> str:
    """test_recipes.TINY at ratio 0.4, timed at batch 4 then 1 (the speedup column takes the first)."""
    data = yaml.safe_load(TINY)
    data["description"] = "ResNet-20 Tucker-2 on digits, with made-up published numbers (test)"
    data["compression"]["rank"] = "ratio:0.4"
    data["export"]["batch_sizes"] = [4, 1]
    return yaml.safe_dump(data, sort_keys=False)


# A complete recipe with published numbers (the embedded ones publish none), so the published columns and the
# plot's published markers have something to show.
PUBLISHED = _published()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Plans run with one torch thread (see `threads.one_thread`)."""
    with one_thread():
        yield


@pytest.fixture(name="tool")
def tool_fixture(monkeypatch):
    """The tool's module, imported from tools/ (it imports its siblings by their bare names, as a script)."""
    monkeypatch.syspath_prepend(str(PROJECT / "tools"))
    monkeypatch.delitem(sys.modules, "reproduce", raising=False)
    import reproduce

    return reproduce


def read_csv(out: Path) -> dict[str, dict[str, str]]:
    """reproduce.csv of ``out`` as {recipe: {column: cell}}, in file order."""
    with open(out / "reproduce.csv", newline="") as fh:
        return {row["recipe"]: row for row in csv.DictReader(fh)}


def number(cell: str) -> float | None:
    """A CSV cell as a float (empty: None)."""
    return None if cell == "" else float(cell)


def same(cell: str, value: float | None) -> bool:
    """Whether a CSV cell holds ``value`` (to 1e-9 relative; empty for None)."""
    got = number(cell)
    return got is None if value is None else got is not None and math.isclose(got, value, rel_tol=1e-9, abs_tol=0)


def test_dry_run_table_matches_dry_run(tool, tmp_path, capsys):
    own = write(tmp_path / "own", "published-tucker", PUBLISHED)
    out = tmp_path / "rep"
    code = tool.main([*EMBEDDED, str(own), "--dry-run", "--recipes-dir", str(RECIPES), "--out", str(out), "-q"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary file left behind
    rows = read_csv(out)
    assert list(rows) == [*EMBEDDED, "published-tucker"]
    for name in rows:
        recipe = load_recipe(own if name == "published-tucker" else name, root=RECIPES)
        summary = dry_run(recipe)
        row = rows[name]
        for key in ("params_ratio", "macs_ratio", "storage_ratio"):
            assert same(row[f"{key}_ours"], summary["ours"][key]), (name, key)
            assert same(row[f"{key}_published"], summary["published"][key]), (name, key)
        for key in ("top1", "baseline_top1"):
            assert row[f"{key}_ours"] == "" and same(row[f"{key}_published"], summary["published"][key])
        assert row["dtop1_ours"] == "" and row["speedup"] == "" and row["speedup_batch"] == ""
        assert row["status"] == "planned" and row["error"] == "" and row["seed"] == recipe.data["source"]["seed"]
        assert row["model"] == "resnet20" and row["method"] == recipe.method()
    assert same(rows["published-tucker"]["dtop1_published"], 91.5 - 92.0)

    md = (out / "reproduce.md").read_text()
    for name in rows:
        assert f"| {name} |" in md
    assert "dry run" in md and "--dry-run" in md and "source: A test paper, Table 9" in md
    data = json.loads((out / "reproduce.json").read_text())
    assert data["dry_run"] is True and data["complete"] is True and [r["recipe"] for r in data["rows"]] == list(rows)
    assert data["rows"][0]["macs_ratio_ours"] == dry_run(load_recipe(EMBEDDED[0], root=RECIPES))["ours"]["macs_ratio"]
    assert (out / "accuracy_vs_macs.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert all(name in printed for name in rows) and "planned" in printed


def test_match_selects_by_glob_and_all_skips_partial_bases(tool, tmp_path):
    recipes = tmp_path / "recipes"
    write(recipes, "base", "description: a partial base\nsource: {seed: tdc, paper: P}\n")
    write(recipes, "child-a", "extends: base\n" + PUBLISHED)
    write(recipes, "child-b", "extends: base\n" + PUBLISHED)
    write(recipes, "other", PUBLISHED)
    assert [r.name for r in tool.select_recipes([], all_recipes=True, root=recipes)] == ["child-a", "child-b", "other"]
    assert [r.name for r in tool.select_recipes([], match="child-*", root=recipes)] == ["child-a", "child-b"]
    assert [r.name for r in tool.select_recipes(["other", "child-a", "other"], match="*", root=recipes)] == \
        ["other", "child-a"]
    out = tmp_path / "rep"
    assert tool.main(["--match", "nothing-*", "--recipes-dir", str(recipes), "--out", str(out), "-q"]) == 2
    assert not out.exists()


def test_unknown_recipe_exits_2_and_writes_nothing(tool, tmp_path, capsys):
    out = tmp_path / "rep"
    runs = tmp_path / "runs"
    code = tool.main([EMBEDDED[0], "no-such-recipe", "--recipes-dir", str(RECIPES), "--out", str(out),
                      "--runs", str(runs), "--keep-going", "-q"])
    assert code == 2
    assert "no recipe 'no-such-recipe'" in capsys.readouterr().err
    assert not out.exists() and not runs.exists()
    with pytest.raises(SystemExit) as exc:  # argparse's own usage errors keep argparse's exit code
        tool.main(["--no-such-option"])
    assert exc.value.code == 2


def _imagenet_without_data(folder: Path, name: str) -> Path:
    """A complete ImageNet recipe without data.root: run_recipe refuses it before any work (UsageError)."""
    text = PUBLISHED.replace("dataset: digits", "dataset: imagenet").replace("name: resnet20", "name: resnet18")
    return write(folder, name, text)


def test_failing_recipe_is_a_row_and_keep_going_runs_the_others(tool, tmp_path):
    recipes = tmp_path / "recipes"
    first, second = _imagenet_without_data(recipes, "needs-data-a"), _imagenet_without_data(recipes, "needs-data-b")
    runs = tmp_path / "runs"

    out = tmp_path / "stop"
    code = tool.main([str(first), str(second), "--recipes-dir", str(recipes), "--runs", str(runs), "--out",
                      str(out), "-q"])
    assert code == 2
    rows = read_csv(out)
    assert list(rows) == ["needs-data-a"]  # stopped after the first failure, its row still written
    assert json.loads((out / "reproduce.json").read_text())["complete"] is False

    out = tmp_path / "keep"
    code = tool.main([str(first), str(second), "--recipes-dir", str(recipes), "--runs", str(runs), "--out",
                      str(out), "--keep-going", "-q"])
    assert code == 2
    rows = read_csv(out)
    assert list(rows) == ["needs-data-a", "needs-data-b"]
    for row in rows.values():
        assert row["status"] == "usage error" and row["exit_code"] == "2"
        assert "data.root" in row["error"] and "imagenet needs its folder" in row["error"]
        assert row["params_ratio_ours"] == "" and same(row["params_ratio_published"], 3.0)
        assert row["run_dir"] == ""
    assert not runs.exists()  # run_recipe refused before creating anything
    md = (out / "reproduce.md").read_text()
    assert "## Failures" in md and "| needs-data-a |" in md and "usage error" in md
    assert (out / "accuracy_vs_macs.png").read_bytes()[:8] == PNG_MAGIC


def _report(top1: float, baseline: float) -> dict:
    """A report dict with the keys report.json has for what the tool reads."""
    latency = {"ort-cpu": {b: {"speedup": s, "speedup_spread": [s - 0.1, s + 0.1], "rounds": 10}
                           for b, s in (("1", 1.25), ("4", 1.75))}}
    return {"params": {"original": 300, "compressed": 100, "ratio": 3.0},
            "macs": {"original": 900, "compressed": 400, "ratio": 2.25}, "storage": None,
            "accuracy": {"ort-cpu": {"original": {"top1": baseline, "top5": 99.0},
                                     "compressed": {"top1": top1, "top5": 98.0}, "top1_drop": baseline - top1,
                                     "dataset": "digits", "samples": 360}},
            "latency": latency, "headline": {"backend": "ort-cpu", "batch": 4},
            "model": {"name": "resnet20"}, "gates_passed": True}


def test_full_run_rows_come_from_the_report(tool, tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    write(recipes, "good", PUBLISHED)
    write(recipes, "gated", PUBLISHED)
    calls = []

    def fake_run(recipe, *, out, data_root, progress, overwrite):
        calls.append((recipe.name, Path(out), data_root, overwrite))
        if recipe.name == "gated":
            Path(out).mkdir(parents=True)
            (Path(out) / "report.json").write_text(json.dumps({**_report(80.0, 90.0), "gates_passed": False}))
            raise GateFailed("gate failed: max_acc_drop (value 10, limit 1)")
        return _report(91.0, 92.5)

    monkeypatch.setattr(tool, "run_recipe", fake_run)
    runs, out = tmp_path / "runs", tmp_path / "rep"
    code = tool.main(["gated", "good", "--recipes-dir", str(recipes), "--runs", str(runs), "--out", str(out),
                      "--data-root", str(tmp_path / "data"), "--overwrite", "--keep-going", "-q"])
    assert code == 3
    data_root = tmp_path / "data"
    assert calls == [("gated", runs / "gated", data_root, True), ("good", runs / "good", data_root, True)]
    rows = read_csv(out)
    good, gated = rows["good"], rows["gated"]
    assert same(good["params_ratio_ours"], 3.0) and same(good["macs_ratio_ours"], 2.25)
    assert same(good["top1_ours"], 91.0) and same(good["baseline_top1_ours"], 92.5)
    assert same(good["dtop1_ours"], 91.0 - 92.5) and same(good["dtop1_published"], 91.5 - 92.0)
    assert same(good["speedup"], 1.75) and good["speedup_batch"] == "4"  # the recipe's first batch size
    assert good["status"] == "done" and good["error"] == "" and good["run_dir"] == str(runs / "good")
    assert good["accuracy_from"] == "ort-cpu on digits (n=360)"
    assert gated["status"] == "gate failed" and gated["exit_code"] == "3" and "max_acc_drop" in gated["error"]
    assert same(gated["top1_ours"], 80.0) and same(gated["dtop1_ours"], -10.0)  # numbers from its report.json
    data = json.loads((out / "reproduce.json").read_text())
    assert data["dry_run"] is False and data["runs"] == str(runs)
    md = (out / "reproduce.md").read_text()
    assert "1.75x (b4)" in md and "91.00" in md and "-1.50" in md and "full runs in" in md
    assert (out / "accuracy_vs_macs.png").read_bytes()[:8] == PNG_MAGIC


def test_script_runs_standalone(tmp_path):
    """The file runs as a script (its sibling imports resolve), and --help names every option."""
    import subprocess

    result = subprocess.run([sys.executable, str(PROJECT / "tools" / "reproduce.py"), "--help"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for option in ("--all", "--match", "--dry-run", "--data-root", "--runs", "--out", "--recipes-dir", "--overwrite",
                   "--keep-going"):
        assert option in result.stdout
