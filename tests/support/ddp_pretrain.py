"""Run by tests/plugin/test_distributed.py: ``solo-iclmsr pretrain`` of SimCLR with ICL-MSR on the
built-in set, with Hydra overrides from the command line; Lightning's launcher starts rank 1 by
re-running this command.

    python ddp_pretrain.py OUT_DIR [overrides]

The views are made deterministic (every random op of the augmentation off) and the training
loader does not shuffle, so that a 2-process run (``DistributedSampler``: even and odd images)
sees in every step the images one process sees with twice the batch. BatchNorm runs in eval mode
(its running statistics, the same on both sides): DDP refuses SyncBatchNorm on CPU modules.
"""

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import solo_iclmsr.data.loaders as loaders
from solo_iclmsr.runs.pretrain import pretrain
from solo_iclmsr.config import compose

REPO = Path(__file__).resolve().parents[2]
DETERMINISTIC_VIEWS = [
    "augmentations.0.rrc.enabled=False", "augmentations.0.color_jitter.prob=0.0",
    "augmentations.0.grayscale.prob=0.0", "augmentations.0.horizontal_flip.prob=0.0"]


def _in_order(cfg, dataset):
    """The images in order; on 2 processes rank r takes images r, r + 2, ... (Lightning's own
    distributed sampler would shuffle: ``use_distributed_sampler=False`` is set)."""
    sampler = None
    if int(cfg.devices) > 1:
        sampler = DistributedSampler(dataset, num_replicas=int(cfg.devices),
                                     rank=int(os.environ.get("LOCAL_RANK", 0)), shuffle=False)
    return DataLoader(dataset, batch_size=int(cfg.optimizer.batch_size), sampler=sampler,
                      shuffle=False, drop_last=True, num_workers=0)


class BatchNormInEvalMode(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    loaders.pretrain_loader = _in_order
    cfg = compose(str(REPO / "configs" / "pretrain" / "builtin"), "simclr", [
        *DETERMINISTIC_VIEWS, f"checkpoint.dir='{out}'", "++use_distributed_sampler=False",
        *overrides])
    pretrain(cfg, callbacks=[BatchNormInEvalMode()])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
