"""Weighted k-nearest-neighbour classification on l2-normalized features.

Each query's k most cosine-similar training features vote for their class with weight
exp(similarity / temperature) (as in Wu et al. 2018 and DINO); classes are ranked by their
summed votes. The weights are computed relative to the nearest neighbour's, exp((similarity -
nearest) / temperature): the same ranking, without overflowing for small temperatures.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from byol.config import ABOVE_0, AT_LEAST_1, setting


@dataclass
class KnnSettings:
    """How `byolctl eval knn` votes, and its batches."""

    k: int = setting(200, "Neighbours that vote.", allowed=AT_LEAST_1)
    temperature: float = setting(0.1, "Votes weigh exp(cosine similarity / temperature).",
                                  allowed=ABOVE_0)
    batch_size: int = setting(256, "Images per batch, per process under torchrun.",
                              allowed=AT_LEAST_1)


@torch.no_grad()
def knn_scores(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
               num_classes: int, k: int, temperature: float, chunk: int = 1024) -> Tensor:
    """(Q, num_classes) vote totals for each query. Features (N, D) and (Q, D), any scale;
    queries are processed `chunk` at a time to bound memory (chunk x N similarities)."""
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for queries in F.normalize(query_features.float(), dim=1).split(chunk):
        similarity, index = (queries @ train.T).topk(k, dim=1)  # sorted, nearest first
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(len(queries), num_classes, device=queries.device)
        votes.scatter_add_(1, train_labels[index], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": %, "top5": %}: how often the label is among the k best-scored classes."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}
