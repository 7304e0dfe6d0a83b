"""Run by tests/plugin/test_ddp.py: a 2-process Lightning DDP fit (gloo, CPU) of a variant.

    python ddp_fit.py METHOD OUT_DIR [overflow]

Lightning's launcher starts rank 1 by re-running this command; each rank saves every parameter
(f, f_ph, f_msr), the regularizer's optimizer state and the meta steps' counts to
OUT_DIR/rank<r>.pt after the fit. With ``overflow``: precision 16-mixed with a real GradScaler,
and an inf written into one gradient of rank 0 alone after the backward of step 1 (its scaler
skips that step, rank 1's does not: the meta step must be skipped on both, or the ranks' meta
steps would wait on each other's collectives).
"""

import os
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plugin_kit import RawImages, build  # noqa: E402


class Data(pl.LightningDataModule):
    def train_dataloader(self):
        data = RawImages(n=64)
        return DataLoader(data, batch_size=8, drop_last=True,
                          sampler=DistributedSampler(data, shuffle=False))


class RankZeroOverflow(pl.Callback):
    """inf in one gradient of rank 0 after the backward of step 1 (gradients already reduced)."""

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_rank == 0 and trainer.global_step == 1:
            p = next(p for p in pl_module.backbone.parameters() if p.grad is not None)
            p.grad[(0,) * p.grad.dim()] = float("inf")


def main() -> None:
    method, out = sys.argv[1], sys.argv[2]
    overflow = sys.argv[3:] == ["overflow"]
    torch.manual_seed(0)
    model = build(method)
    extra = {}
    if overflow:
        from lightning.pytorch.plugins.precision import MixedPrecision

        extra = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler(
            "cpu", init_scale=2.0 ** 8))], "callbacks": [RankZeroOverflow()]}
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         use_distributed_sampler=False, **extra)
    trainer.fit(model, datamodule=Data())
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    msr_state = model.msr_optimizer.state_dict()["state"]
    torch.save({"params": state, "msr_steps": int(msr_state[0]["step"]) if msr_state else 0,
                "counts": dict(model.iclmsr_meta_counts)},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
