"""Coherence (MoPoE paper protocol, REFERENCE.md "Evaluation protocol").

joint:        z ~ p(z) (N samples), decode every modality's mean, classify each;
              coherent iff all predicted labels agree.  coherence p = fraction coherent, with
              standard error sqrt(p (1 - p) / N).
              Diversity (issue 25: a prior that emits one clean digit per class scores p = 1):
              the class histogram of the joint samples per modality (fraction of the N samples its
              classifier puts in class c) and of the coherent samples' agreed class (fraction of the
              N_c coherent samples all of whose classifiers say c), each with its entropy
              H = -sum_c h_c ln h_c in nats (ln 10 = 2.303 is uniform over 10 digits) and the entropy's
              first-order (delta-method) standard error sqrt((sum_c h_c (ln h_c)^2 - H^2) / n).
conditional:  for every non-empty strict subset A of the modalities, one z ~ q(z | X_A) per test
              tuple, decode the missing modalities' means, accuracy of their predicted labels
              against the tuple's label; reported per (A, target), averaged per target over A, and
              averaged over subsets of equal size |A| (the MoPoE figure), and per target by |A|
              (`per_target_by_inputs`: the EB-MVAE paper's figure 2, e.g. targets m2 and m4 by number of
              observed modalities); the MMVAE+ convention, the mean over the M(M-1) single-source pairs,
              is reported as `cross_pairs_mean`.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..data.base import MultimodalData


def subset_key(names) -> str:
    return ",".join(names)


def entropy(h) -> float:
    """H = -sum_c h_c ln h_c of a histogram of fractions (0 ln 0 = 0), in nats."""
    return float(-sum(p * math.log(p) for p in h if p > 0)) + 0.0  # + 0.0: no -0.0


def entropy_se(h, n: int) -> float:
    """First-order (delta-method) standard error of the plug-in entropy of a histogram of n counts:
    sqrt((sum_c h_c (ln h_c)^2 - H^2) / n). It is 0 for a histogram uniform over its non-empty classes
    (the first-order term vanishes there; the plug-in estimate is biased low by about (C - 1) / (2n))."""
    H = entropy(h)
    second = sum(p * math.log(p) ** 2 for p in h if p > 0)
    return math.sqrt(max(second - H * H, 0.0) / n)


def histogram_summary(counts: torch.Tensor) -> dict:
    """{histogram (fractions), entropy (nats), entropy_se, n} of a tensor of class counts; for no counts
    the histogram and entropies are None."""
    n = int(counts.sum())
    if n == 0:
        return {"histogram": None, "entropy": None, "entropy_se": None, "n": 0}
    h = (counts.double() / n).tolist()
    return {"histogram": h, "entropy": entropy(h), "entropy_se": entropy_se(h, n), "n": n}


@torch.no_grad()
def joint_coherence(sample_latents, model, clf, n: int, batch_size: int = 500) -> dict:
    """`sample_latents(b)` returns b latents (b, D) from the prior being evaluated. Returns joint (the
    coherent fraction p), joint_se, n_samples, per_modality (modality -> histogram_summary of its
    predicted classes) and coherent (histogram_summary of the coherent samples' agreed class)."""
    per_mod = {m: torch.zeros(clf.n_classes, dtype=torch.long) for m in model.names}
    agreed = torch.zeros(clf.n_classes, dtype=torch.long)
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        z = sample_latents(b)
        means = model.generate(z)
        preds = torch.stack([clf.predict(m, means[m]).cpu() for m in model.names])  # (M, b)
        coherent = (preds == preds[0]).all(0)
        agreed += torch.bincount(preds[0][coherent], minlength=clf.n_classes)
        for i, m in enumerate(model.names):
            per_mod[m] += torch.bincount(preds[i], minlength=clf.n_classes)
        done += b
    p = int(agreed.sum()) / n
    return {
        "joint": p,
        "joint_se": math.sqrt(p * (1 - p) / n),
        "n_samples": n,
        "per_modality": {m: histogram_summary(h) for m, h in per_mod.items()},
        "coherent": histogram_summary(agreed),
    }


def per_target_by_inputs(per_subset: dict, names) -> dict:
    """{target: {number of inputs: mean accuracy over the subsets of that size without the target}}."""
    out: dict[str, dict[str, list[float]]] = {t: {} for t in names}
    for k, accs in per_subset.items():
        for t, v in accs.items():
            out[t].setdefault(str(len(k.split(","))), []).append(v)
    return {
        t: {k: sum(v) / len(v) for k, v in sorted(by.items(), key=lambda kv: int(kv[0]))} for t, by in out.items() if by
    }


@torch.no_grad()
def conditional_coherence(
    model,
    clf,
    data: MultimodalData,
    device,
    batch_size: int = 500,
    max_inputs: int | None = None,
    langevin: dict | None = None,
) -> dict:
    """`langevin`: settings passed to model.cross_generate (used by EB-MVAE's clamped Langevin)."""
    names = model.names
    M = len(names)
    sizes = range(1, M if max_inputs is None else min(M, max_inputs + 1))
    subsets = [list(c) for k in sizes for c in itertools.combinations(names, k)]
    correct = {subset_key(s): {t: 0 for t in names if t not in s} for s in subsets}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x = data.batch(idx, device)
        y = data.labels[idx].to(device)
        for s in subsets:
            targets = [t for t in names if t not in s]
            gen = model.cross_generate({m: x[m] for m in s}, targets, **(langevin or {}))
            for t in targets:
                correct[subset_key(s)][t] += int((clf.predict(t, gen[t]) == y).sum())
    n = len(data)
    per_subset = {k: {t: c / n for t, c in v.items()} for k, v in correct.items()}
    by_size: dict[int, list[float]] = {}
    for k, accs in per_subset.items():
        by_size.setdefault(len(k.split(",")), []).extend(accs.values())
    by_size_mean = {str(k): sum(v) / len(v) for k, v in sorted(by_size.items())}
    pairs = [per_subset[a][b] for a in names for b in names if a != b and a in per_subset]
    per_target = {t: [accs[t] for accs in per_subset.values() if t in accs] for t in names}
    per_target = {t: sum(v) / len(v) for t, v in per_target.items() if v}
    return {
        "by_inputs": by_size_mean,
        "per_target_by_inputs": per_target_by_inputs(per_subset, names),
        "per_subset": per_subset,
        "per_target": per_target,
        "cross_pairs_mean": sum(pairs) / len(pairs) if pairs else None,
        "n_test": n,
    }
