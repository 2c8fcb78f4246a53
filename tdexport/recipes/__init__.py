"""Recipes: one YAML file per published experiment, validated, then planned (dry run) or run end to end.

A recipe (``recipes/NAME.yaml``; the file stem is its name) holds ``description``, ``source`` (seed, paper,
table), ``model`` (zoo name, weights, num_classes), ``data`` (dataset, root), ``compression`` (format, rank
rule and/or explicit per-layer ``ranks``, the format's options, layer globs, round_to, target), optional
``admm`` and ``finetune`` stages (any `tdexport.train.TrainConfig` field, plus admm's rho / rho_final /
every and finetune's optimizer / devices), ``export`` (precision, backends, batch_sizes, engines),
``validate`` gates and the ``published`` numbers. The keys, types, defaults and accepted values are the
tables of `tdexport.recipes.schema` (the contract with the YAML files); missing optional keys take the
defaults written there. Choices the contract leaves open, made here:

* ``compression.rank`` is required unless the format is ``reorder`` (no rank rule) or ``ranks`` is given;
  ``rank: null`` with ``ranks`` factors only the listed layers.
* ``compression.format: none`` is a seed's dense baseline: no layer is factored (the plan keeps them all), so
  its ``finetune`` stage is the baseline's training and its report compares the model with itself.
* ``--data-root`` (``data_root=``) overrides ``data.root``; digits ignores both; CIFAR without one uses
  tdexport's default ``./data``; imagenet / folder without one is an error.
* ``export.engines: true`` adds the ``trt`` backend (TensorRT engines are built per latency batch).
* A path in ``model.weights`` is relative to the working directory, as on the command line.

``extends: NAME`` merges the file over ``NAME.yaml`` of the same folder (mappings key by key, lists and
scalars replace, null clears a stage); one level only. A base that others extend may be partial.

Public API: `load_recipe`, `list_recipes`, `default_root`, `dry_run`, `run_recipe` (and `Recipe`,
`STATE_FILE`); the CLI is ``tdexport recipe list | show | run``.
"""

from .load import Recipe, default_root, list_recipes, load_recipe
from .planning import dry_run
from .run import STATE_FILE, run_recipe

__all__ = ["Recipe", "STATE_FILE", "default_root", "dry_run", "list_recipes", "load_recipe", "run_recipe"]
