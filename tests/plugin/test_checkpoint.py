"""f_msr and its optimizer state are saved, restored, and a resumed run continues with them."""

import pytorch_lightning as pl
import torch
from plugin_kit import BATCH, loader, method_kwargs
from solo.methods import METHODS


def _fit(model, steps, tmp_path, ckpt_path=None, batches_per_epoch=2):
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, loader(n=batches_per_epoch * BATCH), ckpt_path=ckpt_path)
    return trainer


def test_save_load_round_trip_is_exact(tmp_path):
    model = METHODS["simclr_iclmsr"](**method_kwargs("simclr"))
    trainer = _fit(model, 2, tmp_path)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert "iclmsr_optimizer" in checkpoint

    fresh = METHODS["simclr_iclmsr"](**method_kwargs("simclr"))
    fresh.load_state_dict(checkpoint["state_dict"])
    fresh.on_load_checkpoint(checkpoint)
    for (n, a), (_, b) in zip(model.msr.named_parameters(), fresh.msr.named_parameters()):
        assert torch.equal(a, b), n
    state_a, state_b = model.msr_optimizer.state_dict(), fresh.msr_optimizer.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys() and state_a["state"]
    for key in state_a["state"]:
        for field, value in state_a["state"][key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b["state"][key][field]))


def test_resume_continues_with_the_same_regularizer(tmp_path):
    first = METHODS["simclr_iclmsr"](**method_kwargs("simclr"))
    trainer = _fit(first, 2, tmp_path / "a")
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    saved = {n: p.detach().clone() for n, p in first.msr.named_parameters()}
    saved_adam = first.msr_optimizer.state_dict()["state"]

    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["msr"] = {n: p.detach().clone() for n, p in module.msr.named_parameters()}
            seen["adam"] = {k: {f: torch.as_tensor(v).clone() for f, v in state.items()}
                            for k, state in module.msr_optimizer.state_dict()["state"].items()}

    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    resumed = METHODS["simclr_iclmsr"](**method_kwargs("simclr"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[Probe()])
    trainer.fit(resumed, loader(n=2 * BATCH), ckpt_path=str(tmp_path / "half.ckpt"))
    for name, value in saved.items():
        assert torch.equal(seen["msr"][name], value), name
    for key, state in saved_adam.items():
        assert torch.equal(seen["adam"][key]["exp_avg"], state["exp_avg"])
    assert trainer.global_step == 4
    assert int(resumed.msr_optimizer.state_dict()["state"][0]["step"]) == 4  # 2 before, 2 after
