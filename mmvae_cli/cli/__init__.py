"""The `mmvae` command line. Commands parse, call the engine and print; no math here.

Errors the user can fix print one line `error: ...` and exit with the code documented in
mmvae_cli/errors.py; set MMVAE_DEBUG=1 to see a traceback.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..console import INVOCATION
from ..errors import EXIT_INTERNAL, MMVAEError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mmvae")
def cli():
    """Multimodal VAEs with energy-based priors.

    \b
    Train MVAE (poe), MMVAE (moe), MoPoE (mopoe) and MMVAE+ models, sample them,
    cross-generate missing modalities and evaluate coherence. A trained model is a
    bundle: a folder with manifest.json and .safetensors weights.

    \b
    Quick start (CPU, offline):
      mmvae train polymnist-mini --fusion mopoe --out runs/mopoe
      mmvae classifier train polymnist-mini --out runs/clf
      mmvae sample runs/mopoe -n 64 --out samples.png
      mmvae eval coherence runs/mopoe --classifiers runs/clf --json
    """


def _register():
    from .compare_cmd import compare
    from .data_cmd import data
    from .ebm_cmd import fit_ebm
    from .eval_cmd import evaluate
    from .generate_cmd import cross_generate, sample
    from .prior_cmd import fit_prior
    from .train_cmd import classifier, train

    cli.add_command(train)
    cli.add_command(classifier)
    cli.add_command(fit_ebm)
    cli.add_command(fit_prior)
    cli.add_command(sample)
    cli.add_command(cross_generate)
    cli.add_command(evaluate, "eval")
    cli.add_command(evaluate, "evaluate")
    cli.add_command(data)
    cli.add_command(compare)


_register()


def main(argv=None) -> None:
    """Entry point: run the click app, turning known errors into one line and an exit code."""
    INVOCATION[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=argv, prog_name="mmvae", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except MMVAEError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, naming the command: "error: train: Invalid value for ..."
        where = (
            f"{e.ctx.command_path.removeprefix('mmvae ').strip()}: " if e.ctx and e.ctx.command_path != "mmvae" else ""
        )
        click.echo(f"error: {where}{' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: keep it to one line unless debugging
        if os.environ.get("MMVAE_DEBUG"):
            raise
        click.echo(f"internal error: {e.__class__.__name__}: {e} (set MMVAE_DEBUG=1 for a traceback)", err=True)
        sys.exit(EXIT_INTERNAL)
