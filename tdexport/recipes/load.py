"""Reading recipes: YAML files, one level of ``extends``, ``KEY=VALUE`` overrides, validation, listing.

Every error is a `UsageError` (exit 2) that names the recipe file, the file (or override) the offending key
came from, the dotted key and what it accepts, raised before anything is built or trained.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from .checks import SchemaError
from .schema import resolve

__all__ = ["Recipe", "default_root", "load_recipe", "list_recipes", "parse_override", "to_yaml", "NAME_PATTERN"]

#: A recipe's name is its file stem: lowercase letters, digits, dashes (underscores for zoo names like mobilenet_v2).
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SUFFIXES = (".yaml", ".yml")
ENV_ROOT = "TDEXPORT_RECIPES"


def default_root() -> Path:
    """The recipe folder: ``$TDEXPORT_RECIPES`` when set, else ``recipes/`` at the top of the project."""
    env = os.environ.get(ENV_ROOT)
    # tdexport/recipes/load.py → parents[2] is the checkout holding tdexport/ (an editable install)
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "recipes"


# ---------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and reading ``1e-3`` as a number.

    YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string, so ``lr: 1e-3`` would fail the schema with a
    baffling "got '1e-3' (a string)"; YAML 1.2 and every other language read it as a float.
    """


def _float_resolver() -> None:
    resolvers = _Loader.yaml_implicit_resolvers
    _Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                       for k, v in resolvers.items()}
    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


_float_resolver()


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read recipe {path}: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}: not valid YAML{line}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe is a YAML mapping of keys (description, source, model, …), "
                         f"got a {type(data).__name__}")
    return data


def to_yaml(data: Mapping[str, Any]) -> str:
    """``data`` as block-style YAML in its own key order (short lists inline), as `recipe show` prints it."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flat = all(not isinstance(v, (list, dict)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)

    _Dumper.add_representer(list, _list)
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=1_000_000)  # one line per value: easier to read and to diff


# ---------------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a dotted KEY and a YAML VALUE: ``finetune.epochs=2`` → ``("finetune.epochs", 2)``.

    Raises:
        UsageError: no ``=``, an empty or malformed key, ``extends``, or a VALUE that is not YAML.
    """
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"override {text!r}: expected KEY=VALUE with a dotted KEY, e.g. finetune.epochs=2 or "
                         f"export.precision=[fp32,fp16]")
    if key.split(".")[0] == "extends":
        raise UsageError(f"override {text!r}: extends cannot be overridden; run the other recipe instead")
    try:
        parsed = yaml.load(value, Loader=_Loader) if value.strip() else None  # noqa: S506 - SafeLoader
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"override {text!r}: the value is not YAML ({problem})") from None
    return key, parsed


def _apply_override(data: dict[str, Any], key: str, value: Any, text: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise UsageError(f"override {text!r}: {'.'.join(parts[:i + 1])} is not a mapping "
                             f"(it is {nxt!r}), so it has no key {parts[i + 1]!r}")
        node = nxt
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------- merge


def _merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merged key by key (recursively); lists, scalars and null replace."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _has_path(data: Any, path: str) -> bool:
    """Whether the dotted ``path`` (list indices dropped) was written in ``data``."""
    node = data
    for part in re.sub(r"\[\d+\]", "", path).split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


# ---------------------------------------------------------------------------------------------- recipes


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        name: the file stem (``tdc-resnet32-cifar10``).
        path: the YAML file.
        data: the resolved recipe: ``extends`` merged, overrides applied, every optional key filled with its
            default (`tdexport.recipes.schema.resolve`); ``admm`` / ``finetune`` None when the recipe has none.
        merged: the same before defaults: what the files and overrides say, as ``recipe show`` prints it.
        base: the file ``extends`` named, or None.
        overrides: the ``KEY=VALUE`` strings applied.
        missing: required keys a partial base recipe lacks (empty for every runnable recipe).
    """

    name: str
    path: Path
    data: dict[str, Any]
    merged: dict[str, Any]
    base: Path | None = None
    overrides: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default_factory=tuple)

    @property
    def runnable(self) -> bool:
        """True when no required key is missing (a partial base recipe is only extended, never run)."""
        return not self.missing

    def method(self) -> str:
        """Short method text: ``tucker ratio:0.5``, ``tt (general) vbmf + ADMM``, ``reorder g=4 r=0.25``."""
        comp = self.data.get("compression")
        if not comp:
            return "-"
        if comp["format"] == "none":
            return "none (dense baseline)"
        fmt = "tt (general)" if comp["format"] == "tt" and comp["tt_type"] == "general" else comp["format"]
        if comp["format"] == "reorder":
            rule = f"g={comp['groups']} r={comp['coef_ratio']:g}" + (" progressive" if comp["progressive"] else "")
        else:
            rule = comp["rank"] or ""
            if comp["ranks"]:
                rule = f"{rule} + {len(comp['ranks'])} explicit".strip()
        stages = " + ADMM" if self.data.get("admm") else ""
        return f"{fmt} {rule}{stages}".strip()


def _find(name_or_path: str | os.PathLike[str], root: Path) -> Path:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith(SUFFIXES) or os.sep in text or "/" in text or path.is_file():
        if not path.is_file():
            raise UsageError(f"recipe file not found: {path}")
        return path
    for suffix in SUFFIXES:
        candidate = root / f"{text}{suffix}"
        if candidate.is_file():
            return candidate
    names = [p.stem for p in _files(root)]
    close = difflib.get_close_matches(text, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    listed = f"recipes there: {', '.join(names)}" if names else "it holds none" if root.is_dir() else \
        "that folder does not exist (set $TDEXPORT_RECIPES or give a FILE)"
    raise UsageError(f"no recipe {text!r} in {root}; {hint}{listed}")


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith("."))


def _read_with_base(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None, Path | None]:
    """(the file's own mapping, its base's mapping or None, the base's path or None)."""
    child = _read_yaml(path)
    if "extends" not in child:
        return child, None, None
    name = child["extends"]
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{path}: extends: got {name!r}; accepted: the name of another recipe in the same folder")
    base_path = next((path.parent / f"{name}{s}" for s in SUFFIXES if (path.parent / f"{name}{s}").is_file()), None)
    if base_path is None:
        names = [p.stem for p in _files(path.parent) if p != path]
        close = difflib.get_close_matches(name, names, n=3)
        raise UsageError(f"{path}: extends: no recipe {name!r} in {path.parent}"
                         + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + "; accepted: the name of another recipe in the same folder"
                         + (f" ({', '.join(names)})" if names else ""))
    if base_path.resolve() == path.resolve():
        raise UsageError(f"{path}: extends: a recipe cannot extend itself")
    base = _read_yaml(base_path)
    if "extends" in base:
        raise UsageError(f"{path} extends {base_path}, which itself extends {base['extends']!r}: only one level of "
                         f"extends is allowed (a base recipe may not extend another)")
    return child, base, base_path


def _source_of(err: SchemaError, path: Path, child: Mapping, base: Mapping | None, base_path: Path | None,
               overrides: Sequence[tuple[str, str]]) -> str:
    """Where the offending key was written: an override, the recipe file, or its base."""
    key = re.sub(r"\[\d+\]", "", err.path)
    for text, okey in reversed(overrides):
        if key and (okey == key or okey.startswith(key + ".") or key.startswith(okey + ".")):
            return f"{path}: override {text!r}"
    if err.path and not _has_path(child, err.path) and base is not None and _has_path(base, err.path):
        return f"{path} (from its base {base_path})"
    if err.problem.startswith("missing") and base_path is not None:
        return f"{path} (merged with its base {base_path})"
    return str(path)


def _build(path: Path, overrides: Iterable[str], partial: bool) -> Recipe:
    child, base, base_path = _read_with_base(path)
    merged = _merge(base, child) if base is not None else dict(child)
    merged.pop("extends", None)
    parsed = [(text, parse_override(text)) for text in overrides]
    for text, (key, value) in parsed:
        _apply_override(merged, key, value, text)
    try:
        data, missing = resolve(merged, partial=partial)
    except SchemaError as err:
        where = _source_of(err, path, child, base, base_path, [(t, k) for t, (k, _) in parsed])
        raise UsageError(f"{where}: {err}") from None
    return Recipe(path.stem, path, data, merged, base_path, tuple(overrides), tuple(missing))


def load_recipe(name_or_path: str | os.PathLike[str], *, overrides: Sequence[str] = (), root: str | Path | None = None,
                partial: bool = False) -> Recipe:
    """Load, merge and validate one recipe.

    Args:
        name_or_path: a recipe name (``ROOT/NAME.yaml``) or the path of a YAML file.
        overrides: ``KEY=VALUE`` strings applied after ``extends`` merging, before validation
            (``finetune.epochs=2``, ``compression.rank=ratio:0.4``, ``export.precision=[fp32,fp16]``).
        root: the recipe folder for names (default `default_root`).
        partial: accept missing required keys (a base recipe); the result's ``missing`` lists them.

    Returns:
        The `Recipe`.

    Raises:
        UsageError: unknown recipe, unreadable or invalid YAML, a bad ``extends`` (missing, or a base that
            itself extends), a malformed override, or a schema violation (exit 2), naming the file and key.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    return _build(_find(name_or_path, root), tuple(overrides), partial)


def list_recipes(root: str | Path | None = None) -> list[Recipe]:
    """Every recipe in ``root`` (default `default_root`), validated, sorted by name.

    A recipe that others extend may be partial (its ``missing`` lists the required keys it lacks); any other
    recipe must be complete.

    Raises:
        UsageError: a file that does not validate, or a file name that is not a recipe name (exit 2).
    """
    root = Path(root).expanduser() if root is not None else default_root()
    files = _files(root)
    for path in files:
        if not NAME_PATTERN.match(path.stem):
            raise UsageError(f"{path}: a recipe's file name is its name: lowercase letters, digits and dashes "
                             f"(e.g. tdc-resnet32-cifar10.yaml)")
    recipes = [_build(path, (), partial=True) for path in files]
    bases = {r.base.resolve() for r in recipes if r.base is not None}
    for recipe in recipes:
        if recipe.missing and recipe.path.resolve() not in bases:
            _build(recipe.path, (), partial=False)  # raises, naming the first missing key
    return sorted(recipes, key=lambda r: r.name)
