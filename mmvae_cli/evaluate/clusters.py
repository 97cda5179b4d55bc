"""CMVAE's post-hoc selection of the number of clusters (Palumbo et al. 2024), the procedure of MultiVae
1.0.3's `CMVAE.prune_clusters`.

Training starts from an over-estimated K (--clusters). Every tuple n and modality m gets one draw
z_nm ~ q(z | x_m) and, with the clusters still kept, the cluster posterior p(c | z_nm) ∝ pi_c p(z_nm | c)
(model.ClusterPrior); the tuple's cluster is the majority vote over its modalities of argmax_c p(c | z_nm)
(ties: the lowest index). With K' clusters kept, the criterion is

    h(K') = 1/N sum_n [ beta 1/M sum_m H(p(c | z_nm)) / log K'  -  1/M sum_m log p(z_nm) / D ],

the normalised entropy of the cluster posterior (low: confident assignments) against the per-dimension
log-density of the draws under the mixture (high: the clusters explain them). Then the kept cluster with
the fewest votes (ties: the lowest index) is removed (pi_c = 0, the others renormalised), and so on down
to K' = 2. The selection is the K' of least h (ties: fewer clusters), with its clusters and weights.
(MultiVae divides the entropy by the log of the number of clusters of non-zero posterior, which is K'
unless a probability underflows.) With labels, the selected clustering's purity (the share of tuples in
their cluster's most frequent class) and normalised mutual information with the classes are reported.
"""

from __future__ import annotations

import math

import torch

from ..data.base import MultimodalData
from ..errors import MMVAEError


def check_clustering(model, run: str = "RUN") -> None:
    """A model whose p(z) has clusters (CMVAE), else one line."""
    if not hasattr(model.prior, "responsibilities"):
        raise MMVAEError(
            f"{run} has no clustering prior ({model.config.fusion}/{model.config.objective}); "
            "train a CMVAE with `mmvae train DATA --objective cmvae`"
        )


@torch.no_grad()
def cluster_log_likelihoods(model, data: MultimodalData, device, batch_size: int = 500) -> torch.Tensor:
    """log p(z_nm | c = k) for one draw z_nm ~ q(z | x_m) per tuple and modality: (N, M, K), float64."""
    comp = model.prior.components()
    out = []
    for start in range(0, len(data), batch_size):
        x = data.batch(torch.arange(start, min(start + batch_size, len(data))), device)
        z = model.experts(x).sample()[: len(model.names)]  # (M, B, D)
        out.append(comp.log_prob(z.unsqueeze(-2)).sum(-1).transpose(0, 1).double().cpu())
    return torch.cat(out)


def assess(lpzc: torch.Tensor, logits: torch.Tensor, kept: torch.Tensor, beta: float, dim: int) -> dict:
    """h(K') and its parts for the clusters `kept` ((K,) bool) of the mixture with `logits`, and the votes
    (N,) and votes per cluster (K,)."""
    log_pi = torch.log_softmax(logits.masked_fill(~kept, -math.inf), -1)
    joint = lpzc + log_pi  # (N, M, K)
    resp = torch.softmax(joint, -1)
    entropy = -torch.special.xlogy(resp, resp).sum(-1) / math.log(int(kept.sum()))  # (N, M)
    log_density = torch.logsumexp(joint, -1) / dim  # (N, M)
    per_tuple = beta * entropy.mean(1) - log_density.mean(1)
    K = logits.shape[0]
    counts = torch.nn.functional.one_hot(resp.argmax(-1), K).sum(1)  # (N, K): votes of the M modalities
    votes = counts.argmax(-1)  # the first of the most voted
    return {
        "criterion": per_tuple.mean().item(),
        "entropy": entropy.mean().item(),
        "log_density": log_density.mean().item(),
        "votes": votes,
        "mass": torch.bincount(votes, minlength=K),
        "weights": log_pi.exp(),
    }


def purity_and_nmi(clusters: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Purity 1/N sum_c max_y n_cy and NMI = 2 I(C; Y) / (H(C) + H(Y)) (arithmetic normalisation; 1 when
    both entropies are 0)."""
    c = torch.unique(clusters, return_inverse=True)[1]
    y = torch.unique(labels, return_inverse=True)[1]
    joint = torch.zeros(int(c.max()) + 1, int(y.max()) + 1, dtype=torch.float64)
    joint.index_put_((c, y), torch.ones(len(c), dtype=torch.float64), accumulate=True)
    n = joint.sum()
    p = joint / n
    pc, py = p.sum(1), p.sum(0)
    h_c, h_y = -torch.special.xlogy(pc, pc).sum(), -torch.special.xlogy(py, py).sum()
    mi = (
        torch.special.xlogy(p, p).sum() - torch.special.xlogy(pc, pc).sum() - torch.special.xlogy(py, py).sum()
    ).item()
    nmi = 1.0 if h_c + h_y == 0 else 2 * mi / (h_c + h_y).item()
    return (joint.max(1).values.sum() / n).item(), nmi


def select_clusters(model, data: MultimodalData, device, seed: int = 0, batch_size: int = 500) -> dict:
    """The selection described above (the draws z_nm seeded by `seed`): every step (clusters kept, h and
    its parts, the votes per kept cluster, the one removed next) and the selected clusters with their
    weights; `keep_mask` ((K,) bool) is for `apply_selection`."""
    check_clustering(model)
    if len(data) == 0:
        raise MMVAEError(f"{data.name} {data.split}: no tuples to select the clusters on")
    torch.manual_seed(seed)
    lpzc = cluster_log_likelihoods(model, data, device, batch_size)
    logits = model.prior.logits.detach().double().cpu()
    kept = torch.isfinite(logits)  # clusters removed before (--apply) stay removed
    steps, best = [], None
    while int(kept.sum()) >= 2:
        a = assess(lpzc, logits, kept, float(model.config.beta), model.z_dim)
        idx = kept.nonzero()[:, 0]
        removed = int(idx[a["mass"][idx].argmin()])
        steps.append(
            {
                "clusters": int(kept.sum()),
                "criterion": a["criterion"],
                "entropy": a["entropy"],
                "log_density": a["log_density"],
                "votes": {str(int(k)): int(a["mass"][k]) for k in idx},
                "removed_next": removed if int(kept.sum()) > 2 else None,
            }
        )
        if best is None or a["criterion"] <= best[0]["criterion"]:
            best = (steps[-1], kept.clone(), a)
        kept[removed] = False
    if best is None:
        raise MMVAEError("the clustering prior has fewer than 2 clusters left: nothing to select")
    step, keep, a = best
    out = {
        "metric": "clusters",
        "split": data.split,
        "n": len(data),
        "clusters_trained": int(logits.shape[0]),
        "clusters_before": steps[0]["clusters"],
        "selected": step["clusters"],
        "kept": [int(k) for k in keep.nonzero()[:, 0]],
        "weights": {str(int(k)): a["weights"][k].item() for k in keep.nonzero()[:, 0]},
        "criterion": step["criterion"],
        "steps": steps,
    }
    if data.labels is not None:
        out["purity"], out["nmi"] = purity_and_nmi(a["votes"], data.labels)
    out["keep_mask"] = keep  # for --apply; not recorded
    return out


def apply_selection(run, model, keep: torch.Tensor, result: dict) -> None:
    """Write the selection into bundle `run`: the clusters not kept at logit -inf (pi_c = 0) in
    model.safetensors and the manifest's `clusters` section, in one commit (the weights staged, the
    manifest saved, then the weights moved into place; bundle.write_weights(staged=True))."""
    from .. import bundle
    from ..model_io import WEIGHTS

    with torch.no_grad():
        model.prior.logits.masked_fill_(~keep.to(model.prior.logits.device), -math.inf)
    manifest = bundle.read_manifest(run)
    state = {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("train_prior.")
    }
    bundle.write_weights(run, WEIGHTS, state, manifest, staged=True)
    kept = ("selected", "kept", "weights", "criterion", "clusters_trained", "split", "n")
    manifest["clusters"] = {"created": bundle.now(), **{k: result[k] for k in kept}}
    bundle.save_manifest(run, manifest)
    bundle.commit_staged(run, [WEIGHTS])
