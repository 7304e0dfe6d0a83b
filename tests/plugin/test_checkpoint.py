"""f_msr and its optimizer state are saved, restored, and a resumed run continues with them."""

import lightning.pytorch as pl
import torch
from plugin_kit import BATCH, build, loader, trainer


def _fit(model, steps, tmp_path, ckpt_path=None, batches_per_epoch=2):
    fit = trainer(max_steps=steps, default_root_dir=str(tmp_path))
    fit.fit(model, loader(n=batches_per_epoch * BATCH), ckpt_path=ckpt_path, weights_only=True)
    return fit


def test_save_load_round_trip_is_exact(tmp_path):
    model = build("simclr")
    fit = _fit(model, 2, tmp_path)
    path = tmp_path / "last.ckpt"
    fit.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert "iclmsr_optimizer" in checkpoint

    fresh = build("simclr")
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
    # no schedule: with solo's warm-up cosine the learning rate reaches 0 at the last step, where
    # the meta step is skipped (theta' = theta)
    first = build("simclr", ["scheduler.name=none"])
    fit = _fit(first, 2, tmp_path / "a")
    fit.save_checkpoint(tmp_path / "half.ckpt")
    saved = {n: p.detach().clone() for n, p in first.msr.named_parameters()}
    saved_adam = first.msr_optimizer.state_dict()["state"]

    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["msr"] = {n: p.detach().clone() for n, p in module.msr.named_parameters()}
            seen["adam"] = {k: {f: torch.as_tensor(v).clone() for f, v in state.items()}
                            for k, state in module.msr_optimizer.state_dict()["state"].items()}

    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    resumed = build("simclr", ["scheduler.name=none"])
    fit = trainer(max_steps=4, callbacks=[Probe()])
    fit.fit(resumed, loader(n=2 * BATCH), ckpt_path=str(tmp_path / "half.ckpt"), weights_only=True)
    for name, value in saved.items():
        assert torch.equal(seen["msr"][name], value), name
    for key, state in saved_adam.items():
        assert torch.equal(seen["adam"][key]["exp_avg"], state["exp_avg"])
    assert fit.global_step == 4
    assert int(resumed.msr_optimizer.state_dict()["state"][0]["step"]) == 4  # 2 before, 2 after
