"""Evaluation of a frozen backbone on cached features: k-NN (solo-learn's weighted classifier)
and a fast linear probe (ICLMSR.md section 5).

ICL-MSR is a training-time regularizer: evaluation uses the plain pooled features f(X) of the
backbone; f_msr is not needed. The paper reports 5-NN and linear top-1/top-5.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from solo_iclmsr.core.meta_precision import precision_dtype

__all__ = ["TopK", "extract_features", "autocast_dtype", "evaluation_device", "loader_workers",
           "knn_accuracy", "linear_probe", "classifier_accuracy"]


@dataclass
class TopK:
    """Top-1 and top-5 accuracy in percent."""

    top1: float
    top5: float


class _Progress:
    """The progress line of one feature extraction on stderr: updated in place on a terminal
    (twice a second), one line a minute in a log; a last line with the time and the rate."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done = name, total, 0
        self.start = self.shown = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def _line(self) -> str:
        seconds = time.perf_counter() - self.start
        rate = self.done / seconds if seconds > 0 else 0.0
        return (f"[evaluate] features of {self.name}: {self.done}/{self.total} images, "
                f"{seconds:.0f} s, {rate:.0f} images/s")

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.shown >= (0.5 if self.tty else 60.0):
            self.shown = now
            print(("\r" if self.tty else "") + self._line(), end="" if self.tty else "\n",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        print(("\r" if self.tty else "") + self._line(), file=sys.stderr, flush=True)


def autocast_dtype(precision: Any, device: torch.device) -> Optional[torch.dtype]:
    """The autocast type of a run's ``precision`` on ``device``: float16 for ``16-mixed`` (and
    ``16``, ``16-true``), bfloat16 for ``bf16*``, on a GPU; ``None`` (float32) otherwise."""
    return precision_dtype(precision) if device.type == "cuda" else None


def evaluation_device() -> torch.device:
    """Where evaluation runs: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loader_workers(requested: Any) -> int:
    """Loader processes for an evaluation: the config's (``None`` as 0), at most the cores."""
    return min(int(requested or 0), os.cpu_count() or 1)


def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 256,
                     device: Optional[torch.device] = None,
                     keys: Iterable[str] = ("feats",), num_workers: int = 0,
                     precision: Any = None, name: Optional[str] = None
                     ) -> Tuple[Dict[str, Tensor], Tensor]:
    """Features of every item of an evaluation dataset (``(x, label)`` items, ``x`` normalised),
    in eval and inference mode, batch by batch.

    Args:
        model: a backbone (returns the pooled features) or a solo method (returns a dict; the
            entries named by ``keys`` are kept, e.g. ``feats`` and ``z``).
        dataset: the items.
        batch_size: items per forward pass.
        device: where to run; ``None`` for the model's device.
        keys: the outputs to keep when the model returns a dict.
        num_workers: loader processes that read and transform the images.
        precision: the run's Lightning ``precision``; on a GPU the forward passes run under
            autocast in its type (``autocast_dtype``); the features are returned in float32.
        name: the set's name in the progress line (``None``: no progress line).

    Returns:
        ({key: (N, D)}, labels (N,)); a backbone's features are under ``feats``.
    """
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(precision, device)
    was_training = model.training
    model.eval()
    out: Dict[str, list] = {}
    labels = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    progress = _Progress(name, len(dataset)) if name else None
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                    enabled=dtype is not None):
            for x, y in loader:
                result = model(x.to(device, non_blocking=True))
                result = result if isinstance(result, dict) else {"feats": result}
                for key in keys:
                    out.setdefault(key, []).append(result[key].float().cpu())
                labels.append(torch.as_tensor(y))
                if progress is not None:
                    progress.update(len(y))
    finally:
        model.train(was_training)
    if progress is not None:
        progress.close()
    # concatenated outside inference mode: ordinary tensors, usable by autograd (linear_probe)
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


def classifier_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256,
                        num_workers: int = 0, precision: Any = None,
                        name: Optional[str] = None) -> TopK:
    """Top-1 and top-5 of a classifier that returns ``{"logits": ...}`` (solo's
    ``LinearModel``) on an evaluation dataset (the other arguments: ``extract_features``')."""
    outputs, labels = extract_features(model, dataset, batch_size, keys=("logits",),
                                       num_workers=num_workers, precision=precision, name=name)
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
