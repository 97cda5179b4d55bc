"""Where EB-MVAE's conditional coherence is lost: the unimodal latents, the coupling, or the energy.

python benchmarks/ebmvae_diagnosis.py RUN --classifiers CLF [--data-root DIR] [--n-test 500]
    [--steps 0,10,50,100,300] [--step-sizes A,B,C] [--subsets-per-k 0] [--denoise S] [--smoothed SIGMA]
    [--json-out FILE]

RUN: an EB-MVAE bundle (--fusion none) with a fitted energy (`mmvae fit-ebm RUN`, any objective).
Prints a markdown table, then the JSON of every number (last line; also written to --json-out).

(a) digit information of each unimodal latent: a linear probe (evaluate/probe.py: logistic regression
    on the posterior means of --n-probe training tuples, accuracy on the test tuples), and the
    unimodal VAE's own reconstruction (decoded posterior mean) judged by the classifier, beside the
    classifier's accuracy on the real test images;
(b) upper bounds of any coupling: each unobserved latent replaced by the posterior mean of ANOTHER
    test tuple with the same digit (an oracle that knows the digit: the same for every number of
    observed modalities), and a non-parametric coupling that does not: the unobserved latent of the
    training tuple whose observed latents are nearest (standardised Euclidean) to the test tuple's;
(c) the energy itself: conditional Langevin from the observed latents (posterior samples, clamped),
    the unobserved ones started at the energy's start distribution, decoded and classified after
    each of --steps (cumulative: one chain per step size for plain energies; a noise-conditional
    energy is annealed over its levels, so each total is its own run) for each of --step-sizes
    (plain energies: the Langevin step s; ncsn: the ratio s_i / sigma_i); joint coherence of as many
    unconditional chains run alongside. With a last Tweedie step (--denoise, default the bundle's
    stored one) each row is judged after it and without it ("raw"); the chains continue from the
    Langevin state. With --smoothed SIGMA the energy is replaced by the training tuples' aggregate
    posterior smoothed by N(0, SIGMA^2 I), the density that denoising score matching at SIGMA converges
    to, so (c) shows what the sampler gets from a perfectly fitted energy of that kind.
Conditional numbers are accuracies against the tuple's digit, averaged over (subset, target) pairs
with k observed modalities, and per target (the EB-MVAE paper's figure 2: targets m2 and m4 here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from mmvae_cli.classifier import load_classifiers
from mmvae_cli.data import load_dataset
from mmvae_cli.evaluate.probe import logistic_probe
from mmvae_cli.model_io import load_model
from mmvae_cli.priors.bank import ExpertBank


def parse_list(s: str, kind=float) -> list:
    return [kind(x) for x in s.split(",") if x.strip()]


def subsets_by_k(names: list[str], per_k: int, seed: int) -> list[tuple[str, ...]]:
    """Non-empty strict subsets of the modalities; at most per_k of each size (0 = all), seeded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(1, len(names)):
        combos = list(itertools.combinations(names, k))
        if per_k and len(combos) > per_k:
            keep = torch.randperm(len(combos), generator=g)[:per_k].sort().values.tolist()
            combos = [combos[i] for i in keep]
        out.extend(combos)
    return out


def summarise(acc: dict[tuple[tuple[str, ...], str], float], names: list[str]) -> dict:
    """{(subset, target): accuracy} -> by_inputs {k: mean}, per_target_by_inputs {t: {k: mean}}."""
    by_k: dict[str, list[float]] = {}
    per_t: dict[str, dict[str, list[float]]] = {t: {} for t in names}
    for (s, t), v in acc.items():
        by_k.setdefault(str(len(s)), []).append(v)
        per_t[t].setdefault(str(len(s)), []).append(v)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {
        "by_inputs": {k: mean(v) for k, v in sorted(by_k.items())},
        "per_target_by_inputs": {t: {k: mean(v) for k, v in sorted(d.items())} for t, d in per_t.items()},
    }


@torch.no_grad()
def classify(model, clf, z: torch.Tensor, names: list[str], batch: int = 2000) -> dict[str, torch.Tensor]:
    """Predicted digit of each modality decoded from z (R, D): {name: (R,)}."""
    out = {n: [] for n in names}
    for s in range(0, z.shape[0], batch):
        means = model.means(model.decode(z[s : s + batch], names))
        for n in names:
            out[n].append(clf.predict(n, means[n]).cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--classifiers", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-test", type=int, default=500, help="test tuples (seeded random subset)")
    ap.add_argument("--n-probe", type=int, default=2000, help="training tuples for the probe and the kNN coupling")
    ap.add_argument("--steps", default="0,10,50,100,300", help="Langevin steps (comma-separated)")
    ap.add_argument("--step-sizes", default=None, help="default: 0.03,0.1,0.3 (plain), 0.2,0.4,0.8 (ncsn)")
    ap.add_argument("--subsets-per-k", type=int, default=0, help="observed subsets per size (0 = all)")
    ap.add_argument("--n-joint", type=int, default=None, help="unconditional chains (default: --n-test)")
    ap.add_argument(
        "--smoothed",
        type=float,
        default=None,
        metavar="SIGMA",
        help="replace the energy by the aggregate posterior of all training tuples smoothed by N(0, SIGMA^2) "
        "(what denoising score matching at SIGMA converges to); its Langevin rows then bound such energies",
    )
    ap.add_argument(
        "--denoise",
        type=float,
        default=None,
        help="noise level of the last Tweedie step (default: the bundle's stored setting; 0 = off); "
        "each row is also judged without it ('raw')",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    dev = torch.device(a.device)
    model, manifest = load_model(Path(a.run), dev)
    if model.config.fusion != "none":
        sys.exit(f"{a.run} is not an EB-MVAE bundle (fusion {model.config.fusion}, expected none)")
    prior = model.priors.get("ebm")
    if prior is None:
        sys.exit(f"{a.run} has no energy: fit one with `mmvae fit-ebm {a.run}`")
    if a.smoothed is not None:
        full = load_dataset(manifest["dataset"]["name_or_path"], "train", a.data_root)
        prior.energy = SmoothedAggregate(ExpertBank(model, full, dev), a.smoothed)
    clf, _ = load_classifiers(Path(a.classifiers), dev)
    clf.eval()
    names, d = model.names, model.config.latent_dim
    M = len(names)
    g = torch.Generator().manual_seed(a.seed)
    name = manifest["dataset"]["name_or_path"]
    test, train = load_dataset(name, "test", a.data_root), load_dataset(name, "train", a.data_root)
    test = test.subset(torch.randperm(len(test), generator=g)[: a.n_test].sort().values)
    train = train.subset(torch.randperm(len(train), generator=g)[: a.n_probe].sort().values)
    tb, trb = ExpertBank(model, test, dev), ExpertBank(model, train, dev)
    y, ytr = test.labels.cpu(), train.labels.cpu()
    N = len(test)
    mu = tb.loc.permute(1, 0, 2).reshape(N, M * d)  # posterior means, concatenated (N, M*d)
    mu_tr = trb.loc.permute(1, 0, 2).reshape(len(train), M * d)
    res: dict = {"run": str(a.run), "n_test": N, "n_probe": len(train), "ebm": {}}
    e = manifest["priors"]["ebm"]  # load_model's manifest: today's layout, whatever wrote the bundle
    res["ebm"] = {
        "objective": e.get("fit", {}).get("objective"),
        "energy": e["prior"].get("energy"),
        "langevin": e["prior"].get("langevin"),
        "sigmas": e.get("fit", {}).get("sigmas"),
    }

    # (a) digit information per unimodal latent
    recon = classify(model, clf, mu, names)
    xt = test.batch(torch.arange(N), dev)
    real = {n: float((clf.predict(n, xt[n]).cpu() == y).float().mean()) for n in names}
    res["a"] = {
        n: {
            "probe": logistic_probe(trb.loc[i].cpu(), ytr, tb.loc[i].cpu(), y, seed=a.seed),
            "reconstruction": float((recon[n] == y).float().mean()),
            "classifier_on_data": real[n],
        }
        for i, n in enumerate(names)
    }
    res["a"]["all"] = {"probe": logistic_probe(mu_tr.cpu(), ytr, mu.cpu(), y, seed=a.seed)}

    subsets = subsets_by_k(names, a.subsets_per_k, a.seed)
    # (b) oracle: another test tuple with the same digit
    other = torch.empty(N, dtype=torch.long)
    for i in range(N):
        same = (y == y[i]).nonzero().squeeze(1)
        same = same[same != i]
        other[i] = same[torch.randint(len(same), (1,), generator=g)] if len(same) else i
    pred = classify(model, clf, mu[other], names)
    oracle = {t: float((pred[t] == y).float().mean()) for t in names}
    acc = {(s, t): oracle[t] for s in subsets for t in names if t not in s}
    res["b_oracle"] = {"per_target": oracle, **summarise(acc, names)}
    # (b2) nearest training tuple on the observed latents
    sd = mu_tr.std(0).clamp_min(1e-6)
    zs, zs_tr = mu / sd, mu_tr / sd
    acc = {}
    for s in subsets:
        cols = torch.cat([torch.arange(names.index(n) * d, (names.index(n) + 1) * d) for n in s])
        nn_idx = torch.cdist(zs[:, cols], zs_tr[:, cols]).argmin(1)
        z = mu.clone()
        free = torch.ones(M * d, dtype=torch.bool)
        free[cols] = False
        z[:, free] = mu_tr[nn_idx][:, free]
        targets = [t for t in names if t not in s]
        pred = classify(model, clf, z, targets)
        acc.update({(s, t): float((pred[t] == y).float().mean()) for t in targets})
    res["b_knn"] = summarise(acc, names)

    # (c) conditional and joint Langevin on the energy
    nc = prior.energy.noise_conditional
    step_sizes = parse_list(a.step_sizes) if a.step_sizes else ([0.2, 0.4, 0.8] if nc else [0.03, 0.1, 0.3])
    steps = sorted(parse_list(a.steps, int))
    n_joint = a.n_joint if a.n_joint is not None else N
    torch.manual_seed(a.seed)
    z_obs = torch.cat([tb.sample(torch.arange(N, device=tb.loc.device)) for _ in subsets])  # (S*N, D)
    free_rows = []
    for s in subsets:
        f = torch.ones(M * d, dtype=torch.bool)
        for n in s:
            f[names.index(n) * d : (names.index(n) + 1) * d] = False
        free_rows.append(f.expand(N, -1))
    free = torch.cat([*free_rows, torch.ones(n_joint, M * d, dtype=torch.bool)]).to(dev)
    z_obs = torch.cat([z_obs, torch.zeros(n_joint, M * d, device=dev)])
    res["c"] = []

    def judge(z: torch.Tensor) -> dict:
        pred = classify(model, clf, z, names)
        acc = {}
        for j, s in enumerate(subsets):
            rows = slice(j * N, (j + 1) * N)
            acc.update({(s, t): float((pred[t][rows] == y).float().mean()) for t in names if t not in s})
        jp = torch.stack([pred[n][len(subsets) * N :] for n in names])
        joint = float((jp == jp[0]).all(0).float().mean()) if n_joint else None
        return {**summarise(acc, names), "joint": joint}

    den = a.denoise if a.denoise is not None else float(prior.langevin_settings.get("denoise", 0.0))
    res["ebm"]["denoise"] = den
    for ss in step_sizes:
        torch.manual_seed(a.seed)
        z = torch.where(free, prior.start(free.shape[0]), z_obs)
        start, done = z, 0
        for st in steps:
            t1 = time.time()
            if nc:  # annealed: the schedule depends on the total
                torch.manual_seed(a.seed)
                z = prior.langevin(start, mask=free, steps=st, step_size=ss, denoise=0.0).z if st else start
            elif st > done:  # the chains continue from the Langevin state, the Tweedie step only judges it
                z = prior.langevin(z, mask=free, steps=st - done, step_size=ss, denoise=0.0).z
            done = st
            raw = judge(z)
            row = {"step_size": ss, "steps": st, "denoise": den, **raw}
            if den and st:
                row.update(
                    judge(prior.denoise(z, den, free)),
                    raw={k: raw[k] for k in ("by_inputs", "joint")},
                )
            row["seconds"] = round(time.time() - t1, 1)
            res["c"].append(row)
            print(
                f"step size {ss:g}, {st} steps, denoise {den:g}: {row['by_inputs']}  joint {row['joint']}  "
                f"(raw: {raw['by_inputs']}, joint {raw['joint']})  ({row['seconds']} s)",
                file=sys.stderr,
            )
    res["seconds"] = round(time.time() - t0, 1)
    print(markdown(res, names))
    line = json.dumps(res)
    if a.json_out:
        Path(a.json_out).write_text(line + "\n")
    print(line)
    return res


class SmoothedAggregate(torch.nn.Module):
    """E(z) = -log sum_i N(z; mu_i, diag(s_i^2 + sigma^2)) over the training tuples' concatenated unimodal
    posteriors N(mu_i, diag(s_i^2)): the aggregate posterior smoothed by N(0, sigma^2 I), whose score is
    the minimiser of denoising score matching at sigma over fresh posterior samples. (B, D) -> (B,)."""

    noise_conditional = False

    def __init__(self, bank: ExpertBank, sigma: float):
        super().__init__()
        n = bank.loc.shape[1]
        self.loc = bank.loc.permute(1, 0, 2).reshape(n, -1)
        self.var = bank.scale.permute(1, 0, 2).reshape(n, -1) ** 2 + sigma**2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        iv = 1.0 / self.var  # (N, D)
        c = -0.5 * (self.loc**2 * iv).sum(-1) - 0.5 * self.var.log().sum(-1)  # (N,)
        return -torch.logsumexp(-0.5 * (z**2) @ iv.T + z @ (self.loc * iv).T + c, 1)


def markdown(res: dict, names: list[str]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["| modality | linear probe | own reconstruction | classifier on data |", "| --- | --- | --- | --- |"]
    for n in names:
        r = res["a"][n]
        out.append(f"| {n} | {f(r['probe'])} | {f(r['reconstruction'])} | {f(r['classifier_on_data'])} |")
    out.append(f"| all latents | {f(res['a']['all']['probe'])} | | |")
    ks = list(res["b_knn"]["by_inputs"])
    tg = [t for t in ("m2", "m4") if t in names]
    head = "| coupling | " + " | ".join(f"{k} obs." for k in ks) + " | " + " | ".join(f"{t} by k" for t in tg)
    out += ["", head + " | joint |", "| --- " * (len(ks) + len(tg) + 2) + "|"]

    def line(label, r, joint=None):
        cells = [f(r["by_inputs"].get(k)) for k in ks]
        cells += [" / ".join(f(v) for v in r["per_target_by_inputs"][t].values()) for t in tg]
        return f"| {label} | " + " | ".join(cells) + f" | {f(joint)} |"

    out.append(line("oracle: same-digit posterior mean", res["b_oracle"]))
    out.append(line("nearest training tuple on the observed latents", res["b_knn"]))
    for r in res["c"]:
        label = f"Langevin {r['steps']} steps, size {r['step_size']:g}"
        if r.get("raw"):
            out.append(line(label, {**r, **r["raw"]}, r["raw"]["joint"]))
            label += f", Tweedie step {r['denoise']:g}"
        out.append(line(label, r, r["joint"]))
    return "\n".join(out)


if __name__ == "__main__":
    main()
