"""Evaluation of a frozen backbone: features, k-NN and a linear probe (ICLMSR.md section 5).

ICL-MSR is a training-time regularizer: evaluation uses the plain pooled features f(X) of the
backbone; f_msr is not needed. The paper reports 5-NN and linear top-1/top-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, mean: Sequence[float],
                     std: Sequence[float], crop_size: int, batch_size: int = 256,
                     device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Pooled features (N, D) and labels (N,) of a raw-image dataset, in eval mode.

    Images (uint8) are resized to ``crop_size`` (antialiased bilinear) and normalised with
    ``mean``/``std``, as the device augmentation does for the un-augmented view.
    """
    device = device or next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    feats, labels = [], []
    for _, images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = images.to(device).float() / 255.0
        if x.shape[-1] != crop_size or x.shape[-2] != crop_size:
            x = F.interpolate(x, size=(crop_size, crop_size), mode="bilinear",
                              align_corners=False, antialias=True)
        feats.append(backbone((x - mean_t) / std_t).float().cpu())
        labels.append(torch.as_tensor(targets))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@dataclass
class TopK:
    """Top-1 and top-5 accuracy in percent."""

    top1: float
    top5: float


def _accuracy(scores: Tensor, labels: Tensor) -> TopK:
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return TopK(100.0 * hits[:, 0].float().mean().item(), 100.0 * hits.any(1).float().mean().item())


def knn_accuracy(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, k: int = 5,
                 temperature: float = 0.07, distance: str = "cosine", chunk: int = 1024) -> TopK:
    """Weighted k-NN classifier (solo-learn's): each of the k neighbours votes for its class with
    weight exp(sim / T) for cosine similarity, or 1 / distance for euclidean.
    """
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance={distance!r} is invalid: expected cosine or euclidean.")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    if distance == "cosine":
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk):
        block = test[start:start + chunk]
        if distance == "cosine":
            sim = block @ train.T  # (b, N)
            values, idx = sim.topk(k, dim=1)
            weights = (values / temperature).exp()
        else:
            dist = torch.cdist(block, train)
            values, idx = dist.topk(k, dim=1, largest=False)
            weights = 1.0 / values.clamp_min(1e-8)
        votes = torch.zeros(block.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return _accuracy(torch.cat(scores), test_labels)


def linear_probe(train: Tensor, train_labels: Tensor, tests: Dict[str, Tuple[Tensor, Tensor]],
                 epochs: int = 100, lr: float = 0.1, weight_decay: float = 0.0,
                 batch_size: int = 256, seed: int = 0) -> Dict[str, TopK]:
    """A linear classifier on frozen (standardised) features, SGD with momentum and a cosine
    schedule; returns top-1/top-5 on each named test set."""
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
