"""`mmvae compare RUN1 RUN2 ...`: the latest recorded evaluations of several bundles side by side."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import bundle
from ..console import log
from ..errors import MMVAEError
from . import options


def latest_results(manifest: dict) -> dict:
    """The most recent recorded result of each metric in a manifest's `evaluations`."""
    out = {}
    for e in manifest.get("evaluations", []):
        if isinstance(e, dict) and isinstance(e.get("result"), dict) and e.get("metric"):
            out[e["metric"]] = e["result"]
    return out


def _mean(d: dict | None):
    vals = [v for v in (d or {}).values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def compare_rows(all_results: list[dict]) -> list[tuple[str, list]]:
    """(label, one value per run) for every number that at least one run has."""

    def get(metric, *path):
        def f(r):
            v = r.get(metric)
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            return v

        return f

    def sizes(metric, key):
        return sorted({k for r in all_results for k in ((r.get(metric) or {}).get(key) or {})}, key=int)

    specs = [
        ("joint coherence", get("coherence", "joint")),
        (
            "  joint samples / prior",
            lambda r: r.get("coherence") and f"{r['coherence'].get('n_joint')} / {r['coherence'].get('prior', 'base')}",
        ),
    ]
    specs += [
        ("  class entropy of coherent samples (nats)", get("coherence", "coherent_class_entropy")),
    ]
    specs += [
        (f"conditional coherence, {k} input(s)", get("coherence", "conditional", k))
        for k in sizes("coherence", "conditional")
    ]
    specs += [
        ("  conditional: tuples", get("coherence", "n_test")),
        ("single-source pairs mean (MMVAE+)", get("coherence", "cross_pairs_mean")),
        ("log p(X) (nats)", get("likelihood", "joint")),
        (
            "  importance samples K / tuples / prior",
            lambda r: (
                r.get("likelihood")
                and f"{r['likelihood'].get('k')} / {r['likelihood'].get('n_test')} / "
                f"{r['likelihood'].get('prior', 'base')}"
            ),
        ),
    ]
    specs += [
        (f"log p(X; X_k), |X_k| = {k}", get("likelihood", "by_inputs", k)) for k in sizes("likelihood", "by_inputs")
    ]
    specs += [
        (f"latent probe accuracy, {k} input(s)", get("latent", "by_inputs", k)) for k in sizes("latent", "by_inputs")
    ]
    specs += [
        (
            "  probe: train / test tuples",
            lambda r: r.get("latent") and f"{r['latent'].get('n_train')} / {r['latent'].get('n_test')}",
        )
    ]
    specs += [
        ("FID unconditional (mean over modalities)", lambda r: _mean((r.get("fid") or {}).get("unconditional"))),
        ("FID conditional (mean over targets)", lambda r: _mean((r.get("fid") or {}).get("conditional"))),
        ("FD unconditional, classifier features (mean)", get("fd_classifier", "unconditional_mean")),
        ("FD conditional, classifier features (mean)", get("fd_classifier", "conditional_mean")),
        ("held-out log p(z) (nats)", get("prior", "log_density", "test", "mean")),
        ("memorisation ratio (prior / test distance)", get("prior", "memorisation", "ratio")),
        (
            "  log p(z) / memorisation: prior",
            lambda r: r.get("prior") and f"{r['prior'].get('prior')}",
        ),
    ]
    out = []
    for label, f in specs:
        vals = [f(r) for r in all_results]
        if any(v is not None for v in vals):
            out.append((label, vals))
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (str, int)):
        return str(v)
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write DIR/report.md with the table and the runs plotted together.",
)
@options.json_flag
def compare(runs, report_dir, as_json):
    """Print the latest recorded evaluations of several bundles side by side.

    Nothing is recomputed: run `mmvae eval all RUN` (or single metrics) on each bundle first.
    """
    names, results, models = [], [], []
    for run in runs:
        manifest = bundle.read_manifest(Path(run), kind="mmvae")
        names.append(Path(run).name)
        results.append(latest_results(manifest))
        models.append(manifest.get("model", {}))
    if not any(results):
        raise MMVAEError("none of these runs has recorded evaluations: run `mmvae eval all RUN` first")
    table = compare_rows(results)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "runs": [
                        {
                            "run": str(r),
                            "model": {k: m.get(k) for k in ("fusion", "objective", "latent_dim", "beta")},
                            **res,
                        }
                        for r, m, res in zip(runs, models, results)
                    ]
                }
            )
        )
    else:
        w = max(len(label) for label, _ in table)
        cols = [max(len(n), 10) for n in names]
        click.echo(f"{'':<{w}}  " + "  ".join(f"{n:>{c}}" for n, c in zip(names, cols)))
        click.echo(
            f"{'fusion / objective':<{w}}  "
            + "  ".join(
                f"{(m.get('fusion') or '?') + '/' + (m.get('objective') or '?'):>{c}}" for m, c in zip(models, cols)
            )
        )
        for label, vals in table:
            click.echo(f"{label:<{w}}  " + "  ".join(f"{_fmt(v):>{c}}" for v, c in zip(vals, cols)))
    if report_dir:
        from ..evaluate.report import by_inputs_figure, md_cell, write_public

        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        md = ["# Comparison", "", "| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        md.append(
            "| fusion / objective | " + " | ".join(f"{m.get('fusion')}/{m.get('objective')}" for m in models) + " |"
        )
        md += [f"| {md_cell(label.strip())} | " + " | ".join(_fmt(v) for v in vals) + " |" for label, vals in table]
        md.append("")
        unique = {}
        for n, r in zip(names, results):
            unique[n if n not in unique else f"{n} ({len(unique)})"] = r
        if by_inputs_figure(unique, out / "by_inputs.png"):
            md += [
                "Against the number of inputs (MoPoE paper, figure 3): one line per run.",
                "",
                "![by number of inputs](by_inputs.png)",
                "",
            ]
        write_public(out / "report.md", "\n".join(md).encode())
        log(f"wrote {out / 'report.md'}")
