"""Command-line interface: a thin click shell over the Python API; maps errors to exit codes.

Exit codes: 0 ok · 1 internal error · 2 usage or input error · 3 a validation gate failed ·
4 a requested backend or optional package is unavailable.

Commands live by theme in `model_cmds` (compress, inspect, models), `train_cmds` (train, finetune, admm),
`deploy_cmds` (export, validate, compress-and-export) and `recipe_cmds` (the recipe group); shared options in
`options`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import TdexportError, user_message
from .deploy_cmds import compress_and_export, export, validate
from .engine_cmds import build_engine
from .model_cmds import compress, inspect, models
from .recipe_cmds import recipe
from .train_cmds import admm, finetune, train

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tdexport")
def cli() -> None:
    """tdexport: compress CNNs with tensor decompositions and export them for deployment."""


for _command in (compress, inspect, models, train, finetune, admm, export, validate, compress_and_export,
                 build_engine, recipe):
    cli.add_command(_command)


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
        click.echo(f"tdexport: error: {user_message(exc)}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
