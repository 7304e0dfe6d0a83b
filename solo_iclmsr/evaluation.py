"""Evaluation of a frozen backbone on cached features: k-NN (solo-learn's weighted classifier)
and a fast linear probe (ICLMSR.md section 5).

ICL-MSR is a training-time regularizer: evaluation uses the plain pooled features f(X) of the
backbone; f_msr is not needed. The paper reports 5-NN and linear top-1/top-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["TopK", "extract_features", "knn_accuracy", "linear_probe", "classifier_accuracy"]


@dataclass
class TopK:
    """Top-1 and top-5 accuracy in percent."""

    top1: float
    top5: float


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 256,
                     device: Optional[torch.device] = None,
                     keys: Iterable[str] = ("feats",)) -> Tuple[Dict[str, Tensor], Tensor]:
    """Features of every item of an evaluation dataset (``(x, label)`` items, ``x`` normalised),
    in eval mode.

    Args:
        model: a backbone (returns the pooled features) or a solo method (returns a dict; the
            entries named by ``keys`` are kept, e.g. ``feats`` and ``z``).
        dataset: the items.
        batch_size: items per forward pass.
        device: where to run; ``None`` for the model's device.
        keys: the outputs to keep when the model returns a dict.

    Returns:
        ({key: (N, D)}, labels (N,)); a backbone's features are under ``feats``.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: Dict[str, list] = {}
    labels = []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        result = model(x.to(device))
        result = result if isinstance(result, dict) else {"feats": result}
        for key in keys:
            out.setdefault(key, []).append(result[key].float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)


def knn_accuracy(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor,
                 k: int = 5, temperature: float = 0.07, distance: str = "cosine") -> TopK:
    """solo-learn's weighted k-NN classifier (``solo.utils.knn.WeightedKNNClassifier``): each of
    the k neighbours votes for its class with weight exp(sim / T) (cosine) or 1 / distance."""
    from solo.utils.knn import WeightedKNNClassifier

    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance={distance!r} is invalid: expected cosine or euclidean.")
    knn = WeightedKNNClassifier(k=k, T=temperature, distance_fx=distance)
    knn.update(train_features=train, train_targets=train_labels, test_features=test,
               test_targets=test_labels)
    top1, top5 = knn.compute()
    return TopK(float(top1), float(top5))


def classifier_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> TopK:
    """Top-1 and top-5 of a classifier that returns ``{"logits": ...}`` (solo's
    ``LinearModel``) on an evaluation dataset."""
    outputs, labels = extract_features(model, dataset, batch_size, keys=("logits",))
    return _accuracy(outputs["logits"], labels)


def _accuracy(scores: Tensor, labels: Tensor) -> TopK:
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return TopK(100.0 * hits[:, 0].float().mean().item(), 100.0 * hits.any(1).float().mean().item())


def linear_probe(train: Tensor, train_labels: Tensor, tests: Dict[str, Tuple[Tensor, Tensor]],
                 epochs: int = 100, lr: float = 0.1, weight_decay: float = 0.0,
                 batch_size: int = 256, seed: int = 0) -> Dict[str, TopK]:
    """A linear classifier on cached, frozen (standardised) features, SGD with momentum and a
    cosine schedule; returns top-1/top-5 on each named test set. (``solo-iclmsr linear`` runs
    solo's own ``LinearModel`` on images; this one is for many quick probes of one backbone.)"""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    x = (train - mean) / std
    num_classes = int(train_labels.max()) + 1
    for _, labels in tests.values():
        num_classes = max(num_classes, int(labels.max()) + 1)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * max(1, (x.shape[0] + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(head(x[idx]), train_labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return {name: _accuracy(head((feats - mean) / std), labels)
                for name, (feats, labels) in tests.items()}
