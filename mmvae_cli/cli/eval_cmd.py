"""`mmvae eval WHAT RUN` (also `mmvae evaluate`): coherence, fid, likelihood, latent, prior, clusters, all."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import bundle
from ..config import EvalSettings
from ..console import invocation, log
from ..data import load_dataset
from ..errors import MMVAEError
from ..evaluate import spread_indices
from ..model_io import load_model
from ..runtime import pick_device
from . import options


@click.group()
def evaluate():
    """Evaluate a trained bundle: coherence, fid, likelihood, latent, prior (`all`: the first four); clusters (CMVAE).

    \b
    Every command prints a table (or one JSON object with --json), appends its results to the
    bundle's manifest under `evaluations` with the command line, and with --report DIR writes
    DIR/report.md with the tables and PNG figures. --seed makes every number reproducible.
    """


def _record(run: Path, what: str, result: dict) -> None:
    """Append the result and the command that produced it to the bundle's manifest."""

    manifest = bundle.read_manifest(run)
    manifest.setdefault("evaluations", []).append(
        {"metric": what, "created": bundle.now(), "command": invocation(), "result": result}
    )
    bundle.save_manifest(run, manifest)


# --- shared options --------------------------------------------------------------------------------
split_opt = options.split("Evaluation split.")
limit_opt = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only N tuples of the evaluation split, evenly spaced over it.",
)
report_opt = click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write DIR/report.md with the tables and PNG figures.",
)
prior_opt = options.prior
clf_opt = click.option(
    "--classifiers",
    "clf_run",
    type=click.Path(),
    default=None,
    help="Digit classifier bundle (`mmvae classifier train`): needed for coherence and fid --features classifier.",
)
weights_opt = click.option(
    "--inception-weights",
    default=None,
    metavar="PATH",
    help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .safetensors); "
    "default $MMVAE_INCEPTION_WEIGHTS, then torch hub's cache.",
)


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise MMVAEError(f"{name} must be >= {minimum}, got {value}")


class Context:
    """A loaded bundle and its evaluation split."""

    def __init__(self, run, device, data_root, split, limit, prior: str = "base"):
        _positive("--limit", limit)
        self.run = Path(run)
        self.dev = pick_device(device)
        self.model, self.manifest = load_model(self.run, self.dev)
        self.prior = self.model.latent_prior(prior, str(run))  # an unfitted kind: one line, before any metric
        self.data_root = data_root
        self.dataset = self.manifest["dataset"]["name_or_path"]
        self.test = load_dataset(self.dataset, split, data_root)
        if limit:
            self.test = self.test.subset(spread_indices(len(self.test), limit))

    def train(self):
        """The training split's complete tuples (the latent probe encodes every subset of inputs)."""
        return load_dataset(self.dataset, "train", self.data_root).complete()

    @property
    def missing_ratio(self) -> float:
        """The `--missing-ratio` the run trained with (evaluation always uses complete test tuples)."""
        return float(self.manifest.get("settings", {}).get("train", {}).get("missing_ratio", 0.0))


def _classifiers(ctx: Context, clf_run):
    """The classifier bundle, with a classifier for every modality of the model."""
    from ..classifier import load_classifiers

    clf, _ = load_classifiers(Path(clf_run), ctx.dev)
    missing = [m for m in ctx.model.names if m not in clf.nets]
    if missing:
        raise MMVAEError(f"{clf_run}: has no classifier for modality {missing[0]!r}")
    return clf


def _coherence(ctx: Context, clf_run, n_joint, prior, seed, langevin: dict | None = None) -> dict:
    from ..evaluate import suite

    _positive("--n-joint", n_joint)
    suite.require_labels(ctx.test, "coherence")
    clf = _classifiers(ctx, clf_run)
    return suite.coherence(ctx.model, clf, ctx.test, ctx.dev, n_joint, prior, seed, langevin)


def _likelihood(ctx: Context, k, seed, limit: int | None = None, prior: str = "base") -> dict:
    from ..evaluate import suite

    _positive("--k", k)
    _positive("--ll-limit", limit)
    test = ctx.test if not limit else ctx.test.subset(spread_indices(len(ctx.test), limit))
    return suite.likelihood(ctx.model, test, ctx.dev, k, seed, prior=prior)


def _latent(ctx: Context, n_train, seed) -> dict:
    from ..evaluate import suite

    _positive("--n-train", n_train, 2)
    suite.require_labels(ctx.test, "the latent probe")
    return suite.latent(ctx.model, ctx.train(), ctx.test, ctx.dev, n_train, seed)


def _fid(ctx: Context, n_fid, prior, seed, weights, langevin: dict | None = None) -> dict:
    from ..data.fetch import data_root
    from ..evaluate import suite

    _positive("--n-fid", n_fid, 2)
    stats = data_root(ctx.data_root) / "fid-stats"
    return suite.fid(ctx.model, ctx.test, ctx.dev, n_fid, prior, seed, weights, stats, langevin=langevin)


def _finish(
    ctx: Context, results: dict, skipped: dict, seed: int, as_json: bool, report_dir, prior="base", single: bool = True
):
    """Record each result in the manifest, print the table or JSON, write the report."""
    from ..evaluate.report import text_table, write_report
    from ..evaluate.suite import METRICS

    for name, res in results.items():
        _record(ctx.run, name, res)
    if report_dir:
        path = write_report(
            Path(report_dir),
            ctx.run.name,
            results,
            skipped,
            bundle.read_manifest(ctx.run),
            invocation(),
            ctx.model,
            ctx.test,
            ctx.dev,
            prior,
            seed,
        )
        log(f"wrote {path}")
    if as_json:
        if single:  # one metric: its result, flat
            payload = {"run": str(ctx.run), **next(iter(results.values()))}
        else:
            payload = {"run": str(ctx.run), "seed": seed, **{m: results.get(m) for m in METRICS}, "skipped": skipped}
        payload["training_missing_ratio"] = ctx.missing_ratio
        click.echo(json.dumps(payload))
    else:
        click.echo(
            f"{ctx.run}  ({ctx.test.name} {ctx.test.split}, seed {seed}; "
            f"trained with missing ratio {ctx.missing_ratio:g})"
        )
        click.echo(text_table(results, skipped))


def _common(f):
    for opt in (options.json_flag, report_opt, options.data_root, options.device, options.seed, limit_opt, split_opt):
        f = opt(f)
    return f


# --- commands --------------------------------------------------------------------------------------
@evaluate.command()
@click.argument("run", type=click.Path())
@clf_opt
@options.setting_option(EvalSettings, "n_joint")
@prior_opt
@options.langevin_sample
@_common
def coherence(
    run,
    clf_run,
    n_joint,
    prior,
    langevin,
    split,
    limit,
    seed,
    device,
    data_root,
    report_dir,
    as_json,
):
    """Joint coherence (prior samples) and conditional coherence for every subset of inputs.

    Conditional coherence is reported per subset and target, averaged by number of inputs (the
    MoPoE convention) and averaged over the single-source pairs (the MMVAE+ convention).
    """
    from ..evaluate import suite

    ctx = Context(run, device, data_root, split, limit, prior)
    ctx.prior.check_options(langevin)  # Langevin flags: only for ebm, and values its energy takes
    suite.require_labels(ctx.test, "coherence")  # unlabelled data (cub, celeba): does not apply, say so first
    if not clf_run:
        raise MMVAEError("coherence needs digit classifiers: --classifiers RUN (see `mmvae classifier train`)")
    _finish(
        ctx,
        {"coherence": _coherence(ctx, clf_run, n_joint, prior, seed, langevin)},
        {},
        seed,
        as_json,
        report_dir,
        prior,
    )


@evaluate.command()
@click.argument("run", type=click.Path())
@options.setting_option(EvalSettings, "k")
@prior_opt
@_common
def likelihood(run, k, prior, split, limit, seed, device, data_root, report_dir, as_json):
    """Importance-sampled log p(X) with z from q(z | X_k), for every subset X_k (nats, mean over tuples).

    p(z) is the base prior p0, or with --prior KIND a fitted prior with a tractable density (gmm, flow);
    the result names the prior it was computed under. The energy-based prior's normaliser is unknown,
    so --prior ebm is refused here.
    """
    ctx = Context(run, device, data_root, split, limit, prior)
    if not ctx.prior.tractable:
        raise MMVAEError(
            f"eval likelihood --prior {prior}: its density has no known normaliser; choose one of "
            f"{', '.join(k for k in ctx.model.available_priors() if ctx.model.latent_prior(k).tractable)}"
        )
    _finish(ctx, {"likelihood": _likelihood(ctx, k, seed, prior=prior)}, {}, seed, as_json, report_dir)


@evaluate.command()
@click.argument("run", type=click.Path())
@options.setting_option(EvalSettings, "n_train")
@_common
def latent(run, n_train, split, limit, seed, device, data_root, report_dir, as_json):
    """Logistic-regression probe of the posterior mean for every subset of inputs."""
    ctx = Context(run, device, data_root, split, limit)
    _finish(ctx, {"latent": _latent(ctx, n_train, seed)}, {}, seed, as_json, report_dir)


@evaluate.command()
@click.argument("run", type=click.Path())
@options.setting_option(EvalSettings, "fid_features", "--features", "features")
@clf_opt
@weights_opt
@options.setting_option(EvalSettings, "n_fid")
@prior_opt
@options.langevin_sample
@_common
def fid(
    run,
    features,
    clf_run,
    inception_weights,
    n_fid,
    prior,
    langevin,
    split,
    limit,
    seed,
    device,
    data_root,
    report_dir,
    as_json,
):
    """Unconditional Frechet distance per modality (samples of the prior, jointly generated) and
    conditional per target given the other modalities, each with its mean over modalities.

    \b
    --features inception (default): the FID. Needs pytorch-fid's Inception weights as a local file;
    nothing is downloaded. Real-image statistics are cached under <data root>/fid-stats.
    --features classifier --classifiers CLF: the same distance between the digit classifiers'
    penultimate-layer features of generated and test samples (recorded as metric fd_classifier).
    """
    from ..evaluate import suite

    if features == "classifier":
        if not clf_run:
            raise MMVAEError("fid --features classifier needs the digit classifiers: --classifiers RUN")
        if inception_weights:
            raise MMVAEError("--inception-weights applies to --features inception, not classifier")
    elif clf_run:
        raise MMVAEError("--classifiers applies to --features classifier (the Inception FID uses no classifier)")
    ctx = Context(run, device, data_root, split, limit, prior)
    ctx.prior.check_options(langevin)  # Langevin flags: only for ebm, and values its energy takes
    if features == "inception":
        results = {"fid": _fid(ctx, n_fid, prior, seed, inception_weights, langevin)}
    else:
        _positive("--n-fid", n_fid, 2)
        clf = _classifiers(ctx, clf_run)
        fd = suite.classifier_fd(ctx.model, clf, clf_run, ctx.test, ctx.dev, n_fid, prior, seed, langevin)
        results = {"fd_classifier": fd}
    _finish(ctx, results, {}, seed, as_json, report_dir, prior)


@evaluate.command("prior")
@click.argument("run", type=click.Path())
@prior_opt
@options.setting_option(EvalSettings, "n_prior")
@options.langevin_sample
@_common
def prior_(run, prior, n_prior, langevin, split, limit, seed, device, data_root, report_dir, as_json):
    """Held-out log-density of a prior and the memorisation check of its samples.

    \b
    log-density: mean log p(z) (nats, with its standard error) of z ~ q(z | X), one draw per tuple of
    the evaluation split, and of the training split beside it; for priors with a known normaliser
    (base, gmm, flow); for the energy it is null, with the reason.
    memorisation: the distance from each of --n-prior prior samples to its nearest training posterior
    mean, beside the same distance for the evaluation tuples' posterior means, and their ratio.
    """
    from ..evaluate import suite

    if split == "train":
        raise MMVAEError("eval prior compares the prior with held-out data: --split train would hold none out")
    ctx = Context(run, device, data_root, split, limit, prior)
    ctx.prior.check_options(langevin)
    result = suite.prior(ctx.model, prior, ctx.train(), ctx.test, ctx.dev, n_prior, seed, langevin)
    _finish(ctx, {"prior": result}, {}, seed, as_json, report_dir, prior)


@evaluate.command("clusters")
@click.argument("run", type=click.Path())
@click.option(
    "--apply",
    is_flag=True,
    help="Write the selection into the bundle: the clusters not kept get weight 0 in model.safetensors "
    "(sampling and the base prior then use the kept ones), recorded under `clusters` in the manifest.",
)
@_common
def clusters(run, apply, split, limit, seed, device, data_root, report_dir, as_json):
    """CMVAE: select the number of clusters after training (Palumbo et al. 2024, as MultiVae's prune_clusters).

    \b
    From the K clusters trained, the least-voted cluster is removed one at a time down to 2; each step
    scores h = beta * (normalised entropy of p(c | z)) - log p(z) / D, averaged over one draw
    z ~ q(z | x_m) per tuple and modality, and the K' of least h is selected. Select on the training
    split (--split train); with labels, the selected clustering's purity and NMI are reported.
    Without --apply nothing but the manifest's `evaluations` is written.
    """
    from ..evaluate import clusters as C

    ctx = Context(run, device, data_root, split, limit)
    C.check_clustering(ctx.model, str(run))
    if apply and ctx.manifest.get("parent") is not None:
        raise MMVAEError(f"{run} holds a prior fitted to {ctx.manifest['parent'].get('path')}: --apply to that bundle")
    result = C.select_clusters(ctx.model, ctx.test, ctx.dev, seed)
    keep = result.pop("keep_mask")
    result["applied"] = bool(apply)
    if apply:
        C.apply_selection(ctx.run, ctx.model, keep, result)
    _finish(ctx, {"clusters": result}, {}, seed, as_json, report_dir)


@evaluate.command("all")
@click.argument("run", type=click.Path())
@clf_opt
@weights_opt
@prior_opt
@options.langevin_sample
@options.setting_option(EvalSettings, "all_n_joint", "--n-joint", help="Prior samples for joint coherence.")
@options.setting_option(EvalSettings, "all_k", "--k", help="Importance samples for the likelihoods.")
@options.setting_option(
    EvalSettings,
    "all_ll_limit",
    "--ll-limit",
    help="Likelihood on N evaluation tuples only, evenly spaced (it decodes K x (2^M-1) latents per tuple).",
)
@options.setting_option(EvalSettings, "n_train", help="Training tuples for the latent probe.")
@options.setting_option(EvalSettings, "n_fid", help="Images per modality for FID.")
@_common
def all_(
    run,
    clf_run,
    inception_weights,
    prior,
    langevin,
    n_joint,
    k,
    ll_limit,
    n_train,
    n_fid,
    split,
    limit,
    seed,
    device,
    data_root,
    report_dir,
    as_json,
):
    """Every metric the bundle supports: coherence (with --classifiers), likelihood, latent (with labels),
    and FID (when the Inception weights are found). Skipped metrics are listed with the reason.

    The defaults are lighter than the papers' so that this finishes on a CPU in minutes (likelihood with
    K=12, the MoPoE paper's lower end, on 200 evenly spaced tuples; 2,000 joint samples); every number printed says
    how many samples it used, and the options set them.
    """
    from ..evaluate import fid as F

    results, skipped = {}, {}
    if clf_run:  # check the classifier bundle before any metric runs
        from ..classifier import load_classifiers

        load_classifiers(Path(clf_run))
    try:
        F.find_inception_weights(inception_weights)
    except MMVAEError as e:
        if inception_weights:  # an explicit path that is wrong is an error, not a skip
            raise
        skipped["fid"] = f"no Inception weights ({str(e).split(':', 1)[0]}; see `mmvae eval fid --help`)"
    ctx = Context(run, device, data_root, split, limit, prior)
    ctx.prior.check_options(langevin)  # Langevin flags: only for ebm, and values its energy takes
    ll_prior = prior if ctx.prior.tractable else "base"
    if ll_prior != prior:
        log(f"likelihood under the base prior: the {prior} prior's density has no known normaliser")
    if ctx.test.labels is None:
        skipped["coherence"] = skipped["latent"] = f"{ctx.test.name} has no class labels"
    elif not clf_run:
        skipped["coherence"] = "no --classifiers given"
    if "coherence" not in skipped:
        log("coherence ...")
        results["coherence"] = _coherence(ctx, clf_run, n_joint, prior, seed, langevin)
    log("likelihood ...")
    results["likelihood"] = _likelihood(ctx, k, seed, ll_limit, ll_prior)
    if "latent" not in skipped:
        log("latent probe ...")
        results["latent"] = _latent(ctx, n_train, seed)
    if "fid" not in skipped:
        log("fid ...")
        results["fid"] = _fid(ctx, n_fid, prior, seed, inception_weights)
    _finish(ctx, results, skipped, seed, as_json, report_dir, prior, single=False)
