"""HOTA (Higher Order Tracking Accuracy, Luiten et al., IJCV 2021), without ``trackeval``'s dependencies.

Follows the paper and TrackEval's ``metrics/hota.py`` (the reference implementation), for one
sequence whose per-frame similarity (here the mask IoU of ground-truth objects and predicted tracks)
is given. For each localisation threshold alpha in 0.05, 0.10, ..., 0.95:

* per frame, ground truth and predictions are matched optimally (Hungarian) on similarity weighted
  by the global alignment score of their ids (how much the two ids overlap over the whole sequence,
  so a match that keeps identities wins a tie); pairs with similarity >= alpha are true positives
  (TP), other ground truth false negatives (FN), other predictions false positives (FP);
* DetA = TP / (TP + FN + FP);
* AssA = mean over the TPs of TPA / (TPA + FNA + FPA), where for a TP pairing ids (g, p) TPA counts
  the frames g and p are matched, FNA the other frames of g, FPA the other frames of p;
* HOTA_alpha = sqrt(DetA * AssA).

HOTA, DetA, AssA are the means over alpha; LocA the mean similarity of the TPs, averaged over alpha
(1 at an alpha without TP, as TrackEval). On the tracking clip (seeds 1-12) the four values equal
those of TrackEval 1.3's ``HOTA.eval_sequence`` on the same similarities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

ALPHAS = np.arange(0.05, 0.99, 0.05)
_EPS = np.finfo(float).eps

Frame = tuple[Sequence[int], Sequence[int], np.ndarray]  # ground-truth ids, predicted ids, similarity (gt, pred)


def hota(frames: Iterable[Frame]) -> dict[str, float]:
    """HOTA, DetA, AssA and LocA of one sequence (see the module docstring); ids are any integers."""
    frames = [(np.asarray(g, np.int64), np.asarray(p, np.int64), np.asarray(s, np.float64)) for g, p, s in frames]
    gt_index = {int(i): k for k, i in enumerate(sorted({int(i) for g, _, _ in frames for i in g}))}
    pr_index = {int(i): k for k, i in enumerate(sorted({int(i) for _, p, _ in frames for i in p}))}
    frames = [(np.array([gt_index[int(i)] for i in g], np.intp), np.array([pr_index[int(i)] for i in p], np.intp), s)
              for g, p, s in frames]
    potential = np.zeros((len(gt_index), len(pr_index)))
    gt_count, pr_count = np.zeros((len(gt_index), 1)), np.zeros((1, len(pr_index)))
    for g, p, sim in frames:  # global alignment: soft (IoU-normalised) co-occurrence of the ids
        if len(g) and len(p):
            denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
            potential[g[:, None], p[None, :]] += np.divide(sim, denom, out=np.zeros_like(sim), where=denom > _EPS)
        gt_count[g] += 1
        pr_count[0, p] += 1
    alignment = potential / np.maximum(gt_count + pr_count - potential, _EPS)
    tp, fn, fp, loc = (np.zeros(len(ALPHAS)) for _ in range(4))
    matches = np.zeros((len(ALPHAS), len(gt_index), len(pr_index)))
    for g, p, sim in frames:
        if not len(g) or not len(p):
            fn += len(g)
            fp += len(p)
            continue
        rows, cols = linear_sum_assignment(-(alignment[g[:, None], p[None, :]] * sim))
        for a, alpha in enumerate(ALPHAS):
            ok = sim[rows, cols] >= alpha - _EPS
            n = int(np.count_nonzero(ok))
            tp[a] += n
            fn[a] += len(g) - n
            fp[a] += len(p) - n
            loc[a] += sim[rows[ok], cols[ok]].sum()
            matches[a, g[rows[ok]], p[cols[ok]]] += 1
    ass = matches / np.maximum(1, gt_count[None] + pr_count[None] - matches)
    ass_a = (matches * ass).sum(axis=(1, 2)) / np.maximum(1, tp)
    det_a = tp / np.maximum(1, tp + fn + fp)
    loc_a = np.maximum(1e-10, loc) / np.maximum(1e-10, tp)  # as TrackEval: 1 where there is no TP
    return {"hota": float(np.sqrt(det_a * ass_a).mean()), "deta": float(det_a.mean()), "assa": float(ass_a.mean()),
            "loca": float(loc_a.mean())}


__all__ = ["ALPHAS", "hota"]
