"""Tables (stdout text and markdown) and report pages with PNG figures for evaluation results.

`results` maps a metric name ("coherence", "likelihood", "latent", "fid", "fd_classifier", "prior") to
the dict made by suite.py. Figures use matplotlib's Agg backend; every file is written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from PIL import Image

from ..bundle import atomic_write_bytes
from ..images import grid
from . import spread_indices

BY_INPUTS = (
    ("latent", "latent probe accuracy", "by_inputs"),
    ("coherence", "conditional coherence", "conditional"),
    ("likelihood", "log-likelihood (nats)", "by_inputs"),
)


def _f(v, digits=4) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.1f}"


def rows(results: dict) -> list[tuple[str, str, str]]:
    """(metric, setting, value) rows shared by the text and markdown tables."""
    out = []
    c = results.get("coherence")
    if c:
        se = f" ± {_f(c['joint_se'])}" if c.get("joint_se") is not None else ""
        out.append(("coherence", f"joint ({c['prior']} prior, {c['n_joint']} samples)", _f(c["joint"]) + se))
        hist = c.get("joint_class_histogram") or {}
        if hist:  # a generator that collapses to one class is "coherent" too: show the top class share
            out.append(
                (
                    "coherence",
                    "joint samples in their most frequent class",
                    ", ".join(f"{m} {max(h):.2f}" for m, h in hist.items()),
                )
            )
        if "coherent_class_entropy" in c:  # diversity (nats; ln C is uniform over C classes)
            top = f"max {c['class_entropy_max']:.3f}"
            out.append(
                (
                    "coherence",
                    f"class entropy of the joint samples per modality (nats, {top})",
                    ", ".join(f"{m} {_f(h, 3)}" for m, h in c["joint_class_entropy"].items()),
                )
            )
            h, hse = c["coherent_class_entropy"], c["coherent_class_entropy_se"]
            out.append(
                (
                    "coherence",
                    f"class entropy of the {c['n_coherent']} coherent samples' agreed class (nats, {top})",
                    "-" if h is None else f"{_f(h, 3)} ± {_f(hse, 3)}",
                )
            )
        for k, v in c["conditional"].items():
            out.append(("coherence", f"conditional, {k} input{'s' if k != '1' else ''} ({c['n_test']} tuples)", _f(v)))
        out.append(("coherence", "single-source pairs mean (MMVAE+)", _f(c["cross_pairs_mean"])))
        for t, by in (c.get("per_target_by_inputs") or {}).items():
            out.append(
                (
                    "coherence",
                    f"target {t}, by number of inputs ({', '.join(by)})",
                    " / ".join(_f(v) for v in by.values()),
                )
            )
    ll = results.get("likelihood")
    if ll:
        out.append(
            (
                "likelihood",
                f"log p(X), joint posterior (K={ll['k']}, {ll['n_test']} tuples, {ll.get('prior', 'base')} prior)",
                _f(ll["joint"], 2),
            )
        )
        for k, v in ll["by_inputs"].items():
            out.append(("likelihood", f"log p(X; X_k), |X_k| = {k} (K={ll['k']})", _f(v, 2)))
    lat = results.get("latent")
    if lat:
        for k, v in lat["by_inputs"].items():
            out.append(
                (
                    "latent",
                    f"probe accuracy, {k} input{'s' if k != '1' else ''} "
                    f"({lat['n_train']} train, {lat['n_test']} test)",
                    _f(v),
                )
            )
    for metric in ("fid", "fd_classifier"):
        f = results.get(metric)
        if not f:
            continue
        space = f"{f.get('features', 'inception')} features, {f.get('prior', 'base')} prior"
        for m, v in f["unconditional"].items():
            out.append((metric, f"unconditional {m} ({f['n_generated']} vs {f['n_real']}, {space})", _f(v, 2)))
        if f.get("unconditional_mean") is not None:
            out.append((metric, "unconditional, mean over modalities", _f(f["unconditional_mean"], 2)))
        for m, v in f["conditional"].items():
            out.append((metric, f"conditional {m} given the others", _f(v, 2)))
        if f.get("conditional_mean") is not None:
            out.append((metric, "conditional, mean over targets", _f(f["conditional_mean"], 2)))
    pr = results.get("prior")
    if pr:
        out += _prior_rows(pr)
    cl = results.get("clusters")
    if cl:
        out += _cluster_rows(cl)
    return out


def _cluster_rows(cl: dict) -> list[tuple[str, str, str]]:
    """The rows of `eval clusters`: h per number of clusters kept, the selection and its agreement with the labels."""
    on = f"{cl['n']} {cl['split']} tuples"
    out = [
        (
            "clusters",
            f"h with {s['clusters']} kept (entropy {_f(s['entropy'], 3)}, log p(z)/D {_f(s['log_density'], 3)})",
            _f(s["criterion"], 4),
        )
        for s in cl["steps"]
    ]
    out.append(
        (
            "clusters",
            f"selected of {cl['clusters_before']} ({on}), applied: {cl['applied']}",
            f"{cl['selected']}: {', '.join(map(str, cl['kept']))}",
        )
    )
    if "purity" in cl:
        out.append(
            (
                "clusters",
                "purity / NMI of the selected clustering against the labels",
                f"{_f(cl['purity'])} / {_f(cl['nmi'])}",
            )
        )
    return out


def _prior_rows(pr: dict) -> list[tuple[str, str, str]]:
    """The rows of `eval prior`: held-out log-density and the memorisation check."""
    name = f"{pr['prior']} prior"
    ld = pr.get("log_density")
    if ld:
        out = [
            (
                "prior",
                f"{'held-out ' if split == 'test' else ''}log p(z), z ~ q(z | X) of {d['n']} {split} tuples "
                f"({name}, nats)",
                f"{_f(d['mean'], 3)} ± {_f(d['se'], 3)}",
            )
            for split, d in ((s, ld[s]) for s in ("test", "train"))
        ]
    else:
        out = [("prior", f"held-out log p(z) ({name})", f"n/a: {pr.get('log_density_unavailable')}")]
    mem = pr["memorisation"]
    for who, label in (("prior", f"{mem['prior']['n']} prior samples"), ("test", f"{mem['test']['n']} test means")):
        d = mem[who]
        out.append(
            (
                "prior",
                f"distance to the nearest of {mem['n_train']} training posterior means, {label} (mean, median)",
                f"{_f(d['mean'], 3)}, {_f(d['quantiles']['0.5'], 3)}",
            )
        )
    out.append(("prior", "memorisation ratio: prior / test mean distance (near 0: copies)", _f(mem["ratio"], 3)))
    out.append(
        (
            "prior",
            "prior samples nearer than 95% of test means (0.05: no copying)",
            _f(mem["prior_below_test_q05"], 3),
        )
    )
    return out


def text_table(results: dict, skipped: dict | None = None) -> str:
    r = rows(results)
    w0 = max([len(a) for a, _, _ in r] + [6])
    w1 = max([len(b) for _, b, _ in r] + [7])
    lines = [f"{'metric':<{w0}}  {'setting':<{w1}}  value"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in r]
    for what, why in (skipped or {}).items():
        lines.append(f"{what:<{w0}}  skipped: {why}")
    for name, res in results.items():
        if res and "seconds" in res:
            lines.append(f"{'time':<{w0}}  {name:<{w1}}  {res['seconds']:.1f} s")
    return "\n".join(lines)


def md_cell(text) -> str:
    """A markdown table cell: pipes escaped."""
    return str(text).replace("|", "\\|")


def markdown_table(results: dict, skipped: dict | None = None) -> str:
    lines = ["| metric | setting | value |", "| --- | --- | --- |"]
    lines += [f"| {a} | {md_cell(b)} | {c} |" for a, b, c in rows(results)]
    lines += [f"| {w} | skipped: {md_cell(why)} | - |" for w, why in (skipped or {}).items()]
    return "\n".join(lines)


def _per_subset_table(res: dict, title: str, digits: int) -> str:
    ps = res.get("per_subset") or {}
    if not ps:
        return ""
    first = next(iter(ps.values()))
    if isinstance(first, dict):  # coherence: subset -> target -> accuracy
        lines = [f"**{title}**", "", "| inputs | target | accuracy |", "| --- | --- | --- |"]
        lines += [f"| {s} | {t} | {_f(v, digits)} |" for s, accs in ps.items() for t, v in accs.items()]
    else:
        lines = [f"**{title}**", "", "| inputs | value |", "| --- | --- |"]
        lines += [f"| {s} | {_f(v, digits)} |" for s, v in ps.items()]
    return "\n".join(lines)


# --- figures ---------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_public(path: Path, data: bytes) -> None:
    """Atomic write, then readable by others (a report is meant to be looked at)."""
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    write_public(path, buf.getvalue())


def _save_grid(path: Path, rows_: list, zoom: int = 3) -> None:
    """An images.grid PNG, enlarged `zoom` times (nearest neighbour) so 28x28 samples are visible."""
    arr = grid(rows_)
    buf = io.BytesIO()
    Image.fromarray(arr.repeat(zoom, 0).repeat(zoom, 1)).save(buf, format="PNG")
    write_public(path, buf.getvalue())


def by_inputs_figure(named_results: dict[str, dict], path: Path) -> bool:
    """The MoPoE paper's figure 3: latent accuracy, conditional coherence and log-likelihood against
    the number of inputs; one line per run (the mean over subsets), dots for single subsets."""
    panels = [(m, label, key) for m, label, key in BY_INPUTS if any(r.get(m) for r in named_results.values())]
    if not panels:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (metric, label, key) in zip(axes[0], panels):
        for name, res in named_results.items():
            r = res.get(metric)
            if not r:
                continue
            xs = [int(k) for k in r[key]]
            (line,) = ax.plot(xs, list(r[key].values()), marker="o", label=name)
            for s, v in (r.get("per_subset") or {}).items():
                vals = list(v.values()) if isinstance(v, dict) else [v]
                n_in = len(s.split(","))
                ax.scatter([n_in] * len(vals), vals, s=8, alpha=0.35, color=line.get_color())
            ax.set_xticks(xs)
        ax.set_xlabel("number of input modalities")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    return True


def loss_curves_figure(history: list[dict], path: Path) -> bool:
    """One panel per logged quantity (loss, rec, kl, ...) against the epoch."""
    keys = [k for k in (history[0] if history else {}) if k not in ("epoch", "seconds")]
    if not keys:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for ax, k in zip(axes[0], keys):
        ax.plot(epochs, [h.get(k) for h in history], marker=".")
        ax.set_title(k)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)
    return True


@torch.no_grad()
def sample_figures(model, test, device, out: Path, prior: str, seed: int, n: int = 10) -> list[tuple[str, str]]:
    """joint_samples.png (z from the prior, one row per modality) and conditional_samples.png
    (first row: the input modality of n test tuples; next rows: the other modalities generated
    from it). Modalities whose kind draws (images; text as rendered strings). Returns (file, caption) pairs."""
    kinds = model.kinds
    shown = [m for m in model.names if m in test.modalities and kinds[m].drawable]
    if not shown:
        return []
    made = []
    torch.manual_seed(seed)
    gen = model.generate(model.sample_latents(n, prior=prior))
    _save_grid(out / "joint_samples.png", [kinds[m].render(gen[m]) for m in shown])
    made.append(
        ("joint_samples.png", f"Joint samples: z from the {prior} prior, one row per modality ({', '.join(shown)}).")
    )
    if len(model.names) > 1:
        given = model.names[0]
        x = test.batch(spread_indices(len(test), n), device)  # splits may be sorted by class
        cross = model.cross_generate({given: x[given]}, [m for m in shown if m != given])
        rows_ = ([kinds[given].render(x[given])] if given in shown else []) + [kinds[m].render(cross[m]) for m in cross]
        _save_grid(out / "conditional_samples.png", rows_)
        made.append(
            (
                "conditional_samples.png",
                f"Conditional samples: first row the input {given} of {len(x[given])} test tuples, "
                f"then {', '.join(cross)} generated from it (z ~ q(z | {given})).",
            )
        )
    return made


def write_report(
    out: Path,
    title: str,
    results: dict,
    skipped: dict,
    manifest: dict | None,
    command: str,
    model=None,
    test=None,
    device="cpu",
    prior: str = "base",
    seed: int = 0,
) -> Path:
    """DIR/report.md with the tables and the figures (each PNG written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Evaluation: {title}", "", f"Command: `{command}`", ""]
    if manifest:
        m = manifest.get("model", {})
        md += [
            f"Model: fusion `{m.get('fusion')}`, objective `{m.get('objective')}`, latent "
            f"{m.get('latent_dim')}, beta {m.get('beta')}; dataset `{manifest.get('dataset', {}).get('name')}`, "
            f"{manifest.get('epochs_done', '?')} epochs.",
            "",
        ]
        missing = manifest.get("missing") or {}
        ratio = manifest.get("settings", {}).get("train", {}).get("missing_ratio", 0.0)
        md += [
            f"Training missing ratio {ratio:g}"
            + (
                f" (tuples by number of observed modalities: {missing.get('observed_per_tuple')})"
                if missing
                else " (complete training tuples)"
            )
            + "; evaluated on complete test tuples.",
            "",
        ]
    md += ["## Results", "", markdown_table(results, skipped), ""]
    if by_inputs_figure({title: results}, out / "by_inputs.png"):
        md += [
            "## Against the number of inputs",
            "",
            "Mean over subsets of each size (line) and single subsets (dots), as in the MoPoE paper's figure 3.",
            "",
            "![by number of inputs](by_inputs.png)",
            "",
        ]
    if model is not None and test is not None:
        figs = sample_figures(model, test, device, out, prior, seed)
        if figs:
            md += ["## Samples", ""]
            for f, caption in figs:
                md += [caption, "", f"![{f}]({f})", ""]
    if manifest and manifest.get("history") and loss_curves_figure(manifest["history"], out / "loss_curves.png"):
        md += [
            "## Training curves",
            "",
            "Per-epoch means from the manifest's history.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    details = [
        t
        for t in (
            _per_subset_table(results["coherence"], "Conditional coherence per subset and target", 4)
            if results.get("coherence")
            else "",
            _per_subset_table(results["likelihood"], "Log-likelihood per subset (nats)", 2)
            if results.get("likelihood")
            else "",
            _per_subset_table(results["latent"], "Latent probe accuracy per subset", 4)
            if results.get("latent")
            else "",
        )
        if t
    ]
    if details:
        md += ["## Per subset", ""] + [x for t in details for x in (t, "")]
    path = out / "report.md"
    write_public(path, "\n".join(md).encode())
    return path
