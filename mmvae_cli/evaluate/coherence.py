"""Coherence (MoPoE paper protocol, REFERENCE.md "Evaluation protocol").

joint:        z ~ p(z) (N samples), decode every modality's mean, classify each;
              coherent iff all predicted labels agree.  coherence = fraction coherent.
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

import torch

from ..data.base import MultimodalData


def subset_key(names) -> str:
    return ",".join(names)


@torch.no_grad()
def joint_coherence(sample_latents, model, clf, n: int, batch_size: int = 500) -> dict:
    """`sample_latents(b)` returns b latents (b, D) from the prior being evaluated."""
    agree, per_mod = 0, {m: torch.zeros(clf.n_classes) for m in model.names}
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        z = sample_latents(b)
        means = model.generate(z)
        preds = torch.stack([clf.predict(m, means[m]).cpu() for m in model.names])  # (M, b)
        agree += int((preds == preds[0]).all(0).sum())
        for i, m in enumerate(model.names):
            per_mod[m] += torch.bincount(preds[i], minlength=clf.n_classes).float()
        done += b
    return {"joint": agree / n, "n_samples": n, "class_histogram": {m: (h / n).tolist() for m, h in per_mod.items()}}


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
