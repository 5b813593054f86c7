"""ESAM's merge head and its contrastive merge loss between adjacent frames (esam.md §1.4, `merge_criterion.py`).

The merge head maps each frame's final queries to L2-normalised merge features; online merging compares them
across frames (`online_merge`). The loss teaches features of the same object to agree across frames.

Query-to-instance assignment (as ESAM's `ScanNetMergeCriterion_Fast(tmp=True, p2s=False)` is fed): a query
belongs to GT instance g when its superpoint lies inside g, i.e. more than 50 % of the superpoint's points are
in g (`FrameTargets.superpoint_masks[:, query_superpoints]`, see `query_instance_membership`). This is ALL the
queries inside the instance, not the matcher's one matched query. Rows of the membership are scene-level
instance ids, shared by all frames of a clip, so row g is the same object in every frame.

Loss of a directed frame pair (anchor frame a, other frame b):
  e_a(g) = mean merge feature of the queries of instance g in frame a (not re-normalised, as ESAM);
  anchors = instances with at least one query in both a and b; candidates = instances with at least one
  query in b (an instance seen only in b is a negative); logits = e_a(anchor) . e_b(candidate) / temperature;
  loss = cross-entropy towards the same instance, mean over anchors; 0 when there is no anchor.
Clip loss = sum over the pairs (t, t+1) and (t+1, t) for t = 0..T-2 (ESAM sums, not averages, over the 2(T-1)
pairs); `MergeCriterion` = weight (2.0) x mean of the clip losses over the batch.

Departure from ESAM, on purpose: ESAM finds absent instances by testing logits for exact zeros (an absent
instance has a zero mean feature), which also drops a present pair whose dot product happens to be exactly 0;
here presence is taken from the membership counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MergeHead(nn.Module):
    """MLP d_model -> hidden -> out with LayerNorm (ESAM-E's `norm='layer'`; ESAM uses BatchNorm), L2-normalised."""

    def __init__(self, d_model: int = 256, hidden_channels: int = 512, out_channels: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden_channels),
            nn.LayerNorm(hidden_channels),
            nn.ReLU(),
            nn.Linear(hidden_channels, out_channels),
            nn.LayerNorm(out_channels),
        )

    def forward(self, queries: Tensor) -> Tensor:
        """queries (Q, d_model) -> merge features (Q, out_channels), unit L2 norm per row."""
        return F.normalize(self.net(queries), p=2, dim=-1)


def query_instance_membership(superpoint_masks: Tensor, query_superpoints: Tensor) -> Tensor:
    """Which queries lie inside which GT instance (ESAM's `query_masks`).

    superpoint_masks (G, S) bool (`FrameTargets.superpoint_masks`, rows = scene-level instance ids),
    query_superpoints (Q,) long (`FrameDecoderOutput.query_superpoints`) -> (G, Q) bool.
    """
    return superpoint_masks[:, query_superpoints]


def instance_embeddings(merge_features: Tensor, membership: Tensor) -> tuple[Tensor, Tensor]:
    """Mean merge feature of each instance's queries.

    merge_features (Q, D), membership (G, Q) bool -> `embeddings (G, D)` (zero rows for instances without a
    query) and `present (G,)` bool.
    """
    weights = membership.to(merge_features.dtype)
    counts = weights.sum(dim=1)
    embeddings = (weights @ merge_features) / counts.clamp_min(1.0)[:, None]
    return embeddings, counts > 0


def directed_pair_loss(
    anchor_features: Tensor,
    anchor_membership: Tensor,
    other_features: Tensor,
    other_membership: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """InfoNCE of the anchor frame's instances against the other frame's (module docstring) -> scalar.

    *_features (Q_a, D) / (Q_b, D), *_membership (G, Q_a) / (G, Q_b) bool with the same scene-level rows G.
    No shared instance gives a zero attached to both feature tensors' graphs.
    """
    anchor_embeddings, anchor_present = instance_embeddings(anchor_features, anchor_membership)
    other_embeddings, other_present = instance_embeddings(other_features, other_membership)
    anchors = torch.nonzero(anchor_present & other_present).squeeze(1)
    if anchors.numel() == 0:
        return anchor_features.sum() * 0.0 + other_features.sum() * 0.0
    candidates = torch.nonzero(other_present).squeeze(1)
    logits = anchor_embeddings[anchors] @ other_embeddings[candidates].T / temperature
    # Position of each anchor's own instance among the candidates (anchors are a subset of the candidates).
    targets = torch.searchsorted(candidates, anchors)
    return F.cross_entropy(logits, targets)


def clip_merge_loss(merge_features: list[Tensor], memberships: list[Tensor], temperature: float = 0.07) -> Tensor:
    """Sum of `directed_pair_loss` over (t, t+1) and (t+1, t) of one clip -> scalar (unweighted).

    merge_features: per frame (Q_t, D); memberships: per frame (G, Q_t) bool, rows = scene-level instance ids,
    the same G in every frame. A single frame gives a zero attached to its features.
    """
    if len(merge_features) != len(memberships) or not merge_features:
        raise ValueError(
            f"clip_merge_loss: expected one membership per frame (>= 1 frame), got {len(merge_features)} "
            f"feature tensors and {len(memberships)} memberships"
        )
    num_instances = {membership.shape[0] for membership in memberships}
    if len(num_instances) != 1:
        raise ValueError(
            f"clip_merge_loss: membership rows must be scene-level instance ids shared by all frames of the clip, "
            f"got per-frame row counts {[membership.shape[0] for membership in memberships]}"
        )
    total = sum(features.sum() * 0.0 for features in merge_features)
    for t in range(len(merge_features) - 1):
        total = total + directed_pair_loss(
            merge_features[t], memberships[t], merge_features[t + 1], memberships[t + 1], temperature
        )
        total = total + directed_pair_loss(
            merge_features[t + 1], memberships[t + 1], merge_features[t], memberships[t], temperature
        )
    return total


class MergeCriterion(nn.Module):
    """ESAM's temporal merge loss (`merge_loss_tmp`) over a batch of clips: weight x mean of `clip_merge_loss`."""

    def __init__(self, weight: float = 2.0, temperature: float = 0.07) -> None:
        super().__init__()
        self.weight = weight
        self.temperature = temperature

    def forward(self, merge_features: list[list[Tensor]], memberships: list[list[Tensor]]) -> Tensor:
        """merge_features[clip][frame] (Q, D), memberships[clip][frame] (G_clip, Q) bool -> weighted scalar."""
        if len(merge_features) != len(memberships) or not merge_features:
            raise ValueError(
                f"MergeCriterion: expected as many membership clips as feature clips (>= 1), got "
                f"{len(merge_features)} and {len(memberships)}"
            )
        clip_losses = [
            clip_merge_loss(features, clip_memberships, self.temperature)
            for features, clip_memberships in zip(merge_features, memberships)
        ]
        return self.weight * torch.stack(clip_losses).mean()
