"""Run by tests/plugin/test_ddp.py: a 2-process Lightning DDP fit (gloo, CPU) of a variant.

    python ddp_fit.py METHOD OUT_DIR

Lightning's launcher starts rank 1 by re-running this command; each rank saves every parameter
(f, f_ph, f_msr) and the regularizer's optimizer state to OUT_DIR/rank<r>.pt after the fit.
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


def main() -> None:
    method, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = build(method)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         use_distributed_sampler=False)
    trainer.fit(model, datamodule=Data())
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"params": state, "msr_steps": int(model.msr_optimizer.state_dict()["state"][0]["step"])},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
