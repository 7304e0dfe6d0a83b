"""Shared helpers of the plugin tests: tiny solo-learn 1.0.2 constructor kwargs per method, and
synthetic batches in solo's format ``[indexes, [view, ...], targets]``."""

import copy
from typing import Any, Dict, List, Optional


import torch
from torch.utils.data import DataLoader, Dataset

BATCH = 8
NUM_CLASSES = 10

# Method-specific arguments of solo-learn 1.0.2, at tiny widths (values from upstream's tests).
METHOD_KWARGS: Dict[str, Dict[str, Any]] = {
    "barlow_twins": {"proj_hidden_dim": 64, "proj_output_dim": 64, "lamb": 5e-3, "scale_loss": 0.025},
    "byol": {"proj_output_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 64},
    "deepclusterv2": {"proj_output_dim": 32, "proj_hidden_dim": 64, "num_prototypes": [5, 5],
                      "kmeans_iters": 2, "temperature": 0.1},
    "dino": {"proj_output_dim": 32, "proj_hidden_dim": 64, "num_prototypes": 64,
             "norm_last_layer": True, "clip_grad": 0, "freeze_last_layer": 1,
             "student_temperature": 0.1, "teacher_temperature": 0.07,
             "warmup_teacher_temperature": 0.04, "warmup_teacher_temperature_epochs": 1,
             "use_bn_in_head": False},
    "mocov2plus": {"proj_output_dim": 32, "proj_hidden_dim": 64, "temperature": 0.2, "queue_size": 64},
    "nnbyol": {"proj_output_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 64, "queue_size": 64},
    "nnclr": {"proj_output_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 64,
              "temperature": 0.2, "queue_size": 64},
    "nnsiam": {"proj_output_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 64, "queue_size": 64},
    "ressl": {"proj_output_dim": 32, "proj_hidden_dim": 64, "temperature_q": 0.1,
              "temperature_k": 0.04, "queue_size": 64},
    "simclr": {"proj_output_dim": 32, "proj_hidden_dim": 64, "temperature": 0.2, "supervised": False},
    "simsiam": {"proj_output_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 64},
    "swav": {"proj_output_dim": 32, "proj_hidden_dim": 64, "num_prototypes": 20, "sk_iters": 3,
             "sk_epsilon": 0.05, "temperature": 0.2, "queue_size": 0, "epoch_queue_starts": 0,
             "freeze_prototypes_epochs": 0},
    "vicreg": {"proj_hidden_dim": 64, "proj_output_dim": 64, "sim_loss_weight": 25.0,
               "var_loss_weight": 25.0, "cov_loss_weight": 1.0},
    "wmse": {"proj_hidden_dim": 64, "proj_output_dim": 2, "whitening_size": BATCH,
             "whitening_iters": 1, "whitening_eps": 1e-3},
}
MOMENTUM_METHODS = {"byol", "dino", "mocov2plus", "nnbyol", "ressl"}
METHOD_NAMES = sorted(METHOD_KWARGS)


def method_kwargs(name: str, encoder: str = "test_resnet", cifar: bool = False,
                  backbone_kwargs: Optional[Dict[str, Any]] = None, lr: float = 0.05,
                  iclmsr: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every constructor argument of a solo-learn 1.0.2 method (tiny), plus ``iclmsr``."""
    kwargs: Dict[str, Any] = {
        "encoder": encoder, "num_classes": NUM_CLASSES, "no_labels": False,
        "backbone_args": {"cifar": cifar, "kwargs": dict(backbone_kwargs or {})},
        "max_epochs": 2, "optimizer": "sgd", "lars": False, "lr": lr, "grad_clip_lars": False,
        "weight_decay": 1e-5, "classifier_lr": 0.1, "exclude_bias_n_norm": False,
        "accumulate_grad_batches": 1, "extra_optimizer_args": {"momentum": 0.9},
        "scheduler": "none", "min_lr": 0.0, "warmup_start_lr": 0.0, "warmup_epochs": 0,
        "num_large_crops": 2, "num_small_crops": 0, "eta_lars": 0.02, "lr_decay_steps": None,
        "batch_size": BATCH, "disable_knn_eval": True,
    }
    if name in MOMENTUM_METHODS:
        kwargs.update(base_tau_momentum=0.99, final_tau_momentum=1.0, momentum_classifier=True)
    kwargs.update(copy.deepcopy(METHOD_KWARGS[name]))
    kwargs["iclmsr"] = {"n_strata": 3, "msr_depth": 2, "msr_width": 8, **(iclmsr or {})}
    return kwargs


def make_batch(seed: int = 0, size: int = 32, batch: int = BATCH) -> List[Any]:
    """Two augmented-looking views per image, solo's batch format."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    views = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]
    return [torch.arange(batch), views, torch.randint(0, NUM_CLASSES, (batch,), generator=g)]


class SyntheticViews(Dataset):
    """Deterministic images in solo's per-item format ``(index, [view1, view2], label)``."""

    def __init__(self, n: int = 4 * BATCH, size: int = 32) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.noise = 0.1 * torch.randn(2, n, 3, size, size, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return i, [self.images[i] + self.noise[0, i], self.images[i] + self.noise[1, i]], self.labels[i]


def loader(n: int = 4 * BATCH, size: int = 32) -> DataLoader:
    return DataLoader(SyntheticViews(n, size), batch_size=BATCH, shuffle=False, drop_last=True)


