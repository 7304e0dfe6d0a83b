"""The Lightning side of ICL-MSR: one mixin that adds the regularizer to any solo-learn method.

Per training batch, with ``schedule: interleaved`` (ICLMSR.md section 4):

* stage 1, in ``training_step``: the method's own step runs untouched (its loss, logging, queue
  and centre updates) while its backbone outputs are recorded (``replay.py``); then
  A_s = f_msr(X) (no graph: f_msr is not trained by L_to [paper]) weights the per-crop features
  and L_msr is computed by replaying the method (``core.msr_loss``). The step returns
  L_to = L_method + lambda * L_msr, so Lightning's backward, gradient accumulation, mixed
  precision, clipping, LARS and schedulers work as usual.
* stage 2, in ``on_before_optimizer_step``: the gradients of L_to are in ``.grad`` and the
  parameters are still theta, exactly what the virtual step needs, so they are reused;
  ``core.meta_step`` leaves dM/dphi in f_msr's ``.grad`` and f_msr's own optimizer (Adam) steps.
  With gradient accumulation the accumulated gradient is not the last batch's, so it is
  recomputed on that batch instead.

``schedule: two_stage`` runs the paper's literal two passes: no meta step during the epoch, then
a second pass over the training data that updates only f_msr.

Distributed: every ICL-MSR term is computed as the method computes its own loss across ranks:
the replays see the process group and gather with collectives that can be differentiated twice
and in forward mode (``collectives.py``), SyncBatchNorm inside the meta step uses the global
statistics, and the gradients of theta the meta step takes itself (v at theta', v0, the
diagnostics') are averaged over the ranks as DDP averages the model's. f_msr's parameters are
kept ``requires_grad=False`` outside the meta step, so DDP neither registers nor waits for them;
its meta-gradients are averaged over the ranks before its optimizer steps, which makes them the
gradient of the global meta objective. The meta step calls the bare backbone and heads, never the
DDP wrapper, and asks autograd for gradients with ``torch.autograd.grad``, so DDP's reducer is
not involved.

Mixed precision (ICLMSR.md section 9, ``amp.py``): the meta step follows the GradScaler. On an
optimizer step the scaler will skip (its found-inf record; without a scaler, gradients that are
not finite) there is no meta step and no f_msr update, and a meta-gradient of f_msr that is not
finite (after its average over the ranks) is not applied. Both are counted
(``train_meta_skipped``, ``train_meta_refused``, per epoch, and in the checkpoint), and a run in
which most meta steps were lost says so in one line at its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from solo_iclmsr.config.schema import with_iclmsr_defaults
from solo_iclmsr.core import (ICLMSROptions, PlainGrads, build_strata, collect_grads,
                              frozen_batch_norm, gradient_cosine, meta_step, msr_loss,
                              optimizer_step, resolve_alpha, strata_diagnostics, uniformity_loss)
from solo_iclmsr.core.meta_precision import MetaLossScale
from solo_iclmsr.plugin import adapters, amp, collectives, replay
from solo_iclmsr.plugin.backbones import (SMALL_IMAGE_DATASETS, feature_map, solo_cifar_stem,
                                          timm_backbone_for)
from solo_iclmsr.plugin.second_order import disable_fused_attention, twice_differentiable
from solo_iclmsr.plugin.truncation import EncoderTail


class DeviceAugmentationMixin:
    """Augments raw batches on the device, after Lightning moved them there.

    With ``set_device_augmentation(aug)`` (a ``solo_iclmsr.data.augment.MultiViewAugmentation``),
    a raw batch ``(indexes, images uint8 (B, 3, H, W), targets)`` becomes solo's
    ``[indexes, [view, ...], targets]`` in ``on_after_batch_transfer``, and the raw images,
    resized and normalised, are kept for f_msr. Batches that already hold views pass unchanged.
    """

    def set_device_augmentation(self, augmentation: Optional[nn.Module]) -> None:
        self.device_augmentation = augmentation

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        augmentation = getattr(self, "device_augmentation", None)
        if (augmentation is None or not self.training or not isinstance(batch[1], Tensor)
                or batch[1].dtype != torch.uint8):
            return batch
        indexes, images, targets = batch
        self._iclmsr_raw = augmentation.raw_view(images)
        return [indexes, augmentation(images), targets]


@contextlib.contextmanager
def _trainable(module: nn.Module) -> Iterator[None]:
    params = list(module.parameters())
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


def _float32(obj: Any) -> Any:
    """Half-precision tensors (also inside lists and dicts) as float32; the rest unchanged."""
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float32(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    return obj


class ICLMSRMixin:
    """Adds ICL-MSR to a solo-learn method class; put it first among the bases.

    The registry builds ``<name>_iclmsr`` variants as ``type(..., (ICLMSRMixin,
    DeviceAugmentationMixin, Method), ...)``, constructed from ``cfg`` like the method itself.
    ``cfg.iclmsr`` holds the ``ICLMSROptions``; with ``enabled: false`` the variant trains exactly
    the original method. Backbones: solo's names build solo's models; any other name is a timm
    model (``backbones.py``).
    """

    _iclmsr_method_cls: type
    _iclmsr_adapter: "adapters.MethodAdapter"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        options = ICLMSROptions(**OmegaConf.to_container(self.cfg.iclmsr, resolve=True))
        self.iclmsr = options
        self._iclmsr_raw: Optional[Tensor] = None
        self._iclmsr_pending: Optional[Dict[str, Any]] = None
        self._iclmsr_tail: Optional[EncoderTail] = None
        if options.enabled:
            self.msr_form = self._iclmsr_adapter.msr_form(options.msr_loss)
            self.msr = build_strata(
                options.strata, self.features_dim, options.n_strata, seed=self._iclmsr_seed(),
                depth=options.msr_depth, width=options.msr_width, inputs=options.msr_input,
                weight_head=options.weight_head, temperature=options.weight_temperature,
                bias=options.weight_bias)
            self.msr.requires_grad_(False)  # trained only by the meta step, see module docstring
            disable_fused_attention(self.backbone, getattr(self, "momentum_backbone", nn.Identity()))
            self.msr_optimizer = None
            if options.trains_regularizer:
                self.msr_optimizer = torch.optim.Adam(self.msr.parameters(), lr=options.msr_lr,
                                                      weight_decay=options.msr_weight_decay)
            if options.meta_stages is not None and options.trains_regularizer:
                # not a child module: its parameters are the backbone's
                self.__dict__["_iclmsr_tail"] = EncoderTail(self.backbone, options.meta_stages)
        self.diagnostics_every = int(OmegaConf.select(self.cfg, "diagnostics.every_n_steps",
                                                      default=0) or 0)
        #: meta steps taken, skipped with the optimizer step, and refused (non-finite dM/dphi)
        self.iclmsr_meta_counts: Dict[str, int] = {"taken": 0, "skipped": 0, "refused": 0}
        self._iclmsr_meta_scale = MetaLossScale()

    def _iclmsr_seed(self) -> int:
        """The run's seed (solo's ``seed`` key): draws of ``random_fixed`` and ``meta_batch``."""
        return int(OmegaConf.select(self.cfg, "seed", default=0) or 0)

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        """The method's own defaults and checks, then the ``iclmsr`` block's (validated)."""
        cfg = cls._iclmsr_method_cls.add_and_assert_specific_cfg(cfg)
        return with_iclmsr_defaults(cfg)

    def build_backbone(self, cfg: DictConfig) -> Tuple[nn.Module, int]:
        """solo's backbone for solo's names (with solo's CIFAR stem on the built-in 32 px images
        too); a timm model for every other name."""
        from solo.methods.base import BaseMethod

        if cfg.backbone.name in BaseMethod._BACKBONES:
            backbone, features_dim = super().build_backbone(cfg)
            small = cfg.data.dataset in SMALL_IMAGE_DATASETS and cfg.data.dataset not in (
                "cifar10", "cifar100")  # solo applies its stem to those itself
            if small and cfg.backbone.name.startswith("resnet"):
                solo_cifar_stem(backbone)
            return backbone, features_dim
        backbone = timm_backbone_for(cfg.backbone.name, OmegaConf.to_container(cfg.backbone.kwargs),
                                     cfg.data.dataset)
        return backbone, backbone.num_features

    # ---------------------------------------------------------------------------------------
    # Stage 1
    # ---------------------------------------------------------------------------------------
    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Any:
        if not self.iclmsr.enabled:
            return super().training_step(batch, batch_idx)
        meta = self.iclmsr.schedule == "interleaved" and self.iclmsr.should_meta_step(batch_idx)
        diagnose = self.diagnostics_every > 0 and self.global_step % self.diagnostics_every == 0
        plain_needed = diagnose or (meta and self.iclmsr.meta_grad == "linearized")
        # The stage-1 graph is then differentiated more than once: solo's IterNorm (VIbCReg),
        # whose backward runs once only, runs as its twice-differentiable twin on this step.
        with twice_differentiable(self) if plain_needed else contextlib.nullcontext():
            with replay.recording(self, batch, batch_idx) as record, self._recording_cut(record):
                loss = super().training_step(batch, batch_idx)
            raw = self._iclmsr_raw_images(batch)
            with torch.no_grad():
                weights = self._proposals(raw)  # A_s (B, n, c)
            with replay.replaying(self, record):
                l_msr = self._msr_loss(record, record.feats, weights)
        diagnostics = strata_diagnostics(weights).as_dict("strata/")
        uni_weights = collectives.gather(weights) if self.iclmsr.uni_over == "batch" else weights
        self.log_dict({"train_msr_loss": l_msr.detach(),
                       "train_uni_loss": uniformity_loss(uni_weights, self.iclmsr.uni_t,
                                                         self.iclmsr.uni_over),
                       **diagnostics}, on_epoch=True, on_step=False, sync_dist=True)
        plain = self._plain_grads(loss) if plain_needed else None
        if diagnose:
            self.log("diag/grad_cos_msr_ct", self._gradient_cosine(plain, l_msr),
                     on_epoch=True, on_step=False, sync_dist=True)
        if meta:
            self._iclmsr_pending = {"record": record, "raw": raw, "plain": plain,
                                    "diagnose": diagnose}
        return loss + self.iclmsr.lambda_msr * l_msr

    def _recording_cut(self, record: replay.StepRecord) -> Any:
        """With ``meta_stages``: the training step's activations at the cut, into the record."""
        if self._iclmsr_tail is None:
            return contextlib.nullcontext()
        return self._iclmsr_tail.recording(record.cut_activations)

    def _gradient_cosine(self, plain: PlainGrads, l_msr: Tensor) -> Tensor:
        """cos(grad_theta L_msr, grad_theta L_ct) on the batch, from the stage-1 graph (the
        first-order reading of the meta objective, ICLMSR.md section 8)."""
        _, params = self._theta()
        msr = collectives.average(torch.autograd.grad(l_msr, list(params.values()),
                                                      retain_graph=True, allow_unused=True))
        return gradient_cosine([plain.grads[k] for k in params], msr, list(params.values()))

    def _iclmsr_raw_images(self, batch: Sequence[Any]) -> Tensor:
        """What f_msr sees: the raw batch (resized, normalised) when the device augmentation
        provided it; else the first large crop (solo's own data loaders give no raw image)."""
        if self._iclmsr_raw is not None:
            return self._iclmsr_raw
        crops = batch[1]
        return crops[0] if isinstance(crops, (list, tuple)) else crops

    def _proposals(self, raw: Tensor) -> Tensor:
        """A_s = f_msr(raw image and/or the encoder's feature map of it, as configured)."""
        features = None
        if self.msr.reads_features:
            with frozen_batch_norm(self.backbone):
                features = feature_map(self.backbone, _float32(raw))
        return self.msr(_float32(raw), features)

    def _msr_loss(self, record: replay.StepRecord, feats: Sequence[Tensor], weights: Tensor) -> Tensor:
        """L_msr on a_t-weighted per-crop features, in the configured reading (ICLMSR.md 3).
        Call inside ``replay.replaying``."""
        if self.msr_form == "mean":
            def stratum_loss(views: List[Tensor]) -> Tensor:
                return replay.method_loss(self, self._iclmsr_method_cls, record, views)
        else:
            adapter, tau = self._iclmsr_adapter, self._iclmsr_adapter.tau_msr(self, self.iclmsr.tau_msr)

            def stratum_loss(views: List[Tensor]) -> Tensor:
                outputs = replay.method_outputs(self, record, views)
                return adapter.positive_log_probs(self, outputs, record, tau)
        return msr_loss(stratum_loss, feats, weights, self.msr_form)

    def _theta(self, encoder: Optional[nn.Module] = None
               ) -> Tuple[nn.Module, Dict[str, nn.Parameter]]:
        """f_ph as one module, and theta = (f, f_ph) keyed as ``core.collect_grads`` keys it
        with ``encoder`` as f (default the backbone; the tail of ``meta_stages`` has the names
        ``backbone.<name>`` and only the parameters after its cut)."""
        encoder = self.backbone if encoder is None else encoder
        head = nn.ModuleDict({name: getattr(self, name) for name in adapters.head_module_names(self)})
        if isinstance(encoder, EncoderTail):
            moved = set(encoder.parameter_names())
            encoder_params = {k: p for k, p in encoder.named_parameters() if k in moved}
        else:
            encoder_params = {k: p for k, p in encoder.named_parameters() if p.requires_grad}
        params = {**{f"encoder.{k}": p for k, p in encoder_params.items()},
                  **{f"head.{k}": p for k, p in head.named_parameters() if p.requires_grad}}
        return head, params

    def _plain_grads(self, loss: Tensor) -> PlainGrads:
        """grad_theta L_ct(theta) from the stage-1 graph (the method's loss; its online
        classifiers do not reach theta), averaged over the ranks: v0 of ``meta_grad:
        linearized`` and of the diagnostics."""
        _, params = self._theta()
        grads = collectives.average(torch.autograd.grad(loss, list(params.values()),
                                                        retain_graph=True, allow_unused=True))
        return PlainGrads(_float32(loss.detach()), dict(zip(params, grads)))

    # ---------------------------------------------------------------------------------------
    # Stage 2
    # ---------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer: Any) -> None:
        super().on_before_optimizer_step(optimizer)
        pending, self._iclmsr_pending = self._iclmsr_pending, None
        if pending is None:
            return
        inner = getattr(optimizer, "optimizer", optimizer)
        gradients = amp.step_gradients(self.trainer, inner, [
            p for group in inner.param_groups for p in group["params"]])
        if gradients.skipped:  # the scaler skips this step: theta does not move, nor does f_msr
            self._iclmsr_count("skipped")
            return
        reuse = getattr(self.trainer, "accumulate_grad_batches", 1) == 1
        self.iclmsr_meta_step(pending["record"], pending["raw"], optimizer, reuse,
                              pending["plain"] if reuse else None, pending["diagnose"],
                              grad_scale=gradients.scale)

    def _iclmsr_count(self, outcome: str) -> None:
        """Count a meta step's outcome (``taken``, ``skipped``, ``refused``) and log the epoch's
        skipped and refused ones. Every rank counts the same (the decisions are agreed), so the
        counts are logged without a reduction over the ranks, which would sum them."""
        self.iclmsr_meta_counts[outcome] += 1
        for name in ("skipped", "refused"):
            self.log(f"train_meta_{name}", float(outcome == name), on_step=False, on_epoch=True,
                     reduce_fx="sum", sync_dist=False)

    def on_train_end(self) -> None:
        super().on_train_end()
        counts = self.iclmsr_meta_counts
        lost = counts["skipped"] + counts["refused"]
        total = lost + counts["taken"]
        if total and lost > total / 2:
            from lightning.pytorch.utilities import rank_zero_warn

            advice = ("precision bf16-mixed or 32" if counts["skipped"] >= counts["refused"] else
                      "iclmsr.meta_precision=float32" if self.iclmsr.meta_precision == "autocast"
                      else "a lower iclmsr.msr_lr or iclmsr.alpha")
            rank_zero_warn(
                f"ICL-MSR: {lost} of {total} meta steps were lost ({counts['skipped']} skipped with "
                f"an optimizer step whose gradients overflowed, {counts['refused']} refused for a "
                f"non-finite meta-gradient): f_msr was barely trained; try {advice}.")

    def iclmsr_meta_step(self, record: replay.StepRecord, raw: Tensor, optimizer: Any,
                         reuse_grads: bool = False, plain: Optional[PlainGrads] = None,
                         diagnose: bool = False, grad_scale: float = 1.0) -> Dict[str, float]:
        """Stage 2 on one batch: update f_msr by the meta-gradient; return what it measured
        (nothing when the meta-gradient was not finite and f_msr was left as it was).
        ``grad_scale``: the loss scale ``.grad`` still carries (reused gradients are divided by
        it)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's inner one
        tail = self._iclmsr_tail
        encoder = self.backbone if tail is None else tail
        head, params = self._theta(encoder)
        lr = _backbone_lr(optimizer)
        alpha = resolve_alpha(self.iclmsr, lr)
        if alpha <= 0:  # e.g. warm-up from lr 0: theta' = theta, L_ct(theta') does not depend on A
            return {}
        stage1 = collect_grads(encoder, head, copy=grad_scale != 1.0) if reuse_grads else None
        if stage1 is not None and grad_scale != 1.0:
            stage1 = {k: None if g is None else g.div_(grad_scale) for k, g in stage1.items()}
        if plain is not None and tail is not None:  # keyed by the tail's names
            plain = PlainGrads(plain.loss, {"encoder.backbone." + k[len("encoder."):]
                                            if k.startswith("encoder.") else k: g
                                            for k, g in plain.grads.items()})
        virtual_step = None
        if self.iclmsr.virtual_step == "optimizer":
            virtual_step = optimizer_step(optimizer, params, lr=self.iclmsr.alpha)
        # The meta step runs in float32, outside autocast, and what the mixed-precision training
        # step recorded is cast up; with meta_precision: autocast, core.meta_step autocasts the
        # passes of the L_ct(theta') part again (float16: with its own dynamic loss scale).
        dtype = amp.autocast_dtype(self._trainer)
        loss_scale = (self._iclmsr_meta_scale.scale if dtype == torch.float16
                      and self.iclmsr.meta_precision == "autocast" else None)
        record = dataclasses.replace(record, momentum_feats=_float32(record.momentum_feats),
                                     constants=_float32(record.constants))
        views = record.views
        if tail is not None:
            tail.check_unchanged()
            views = _float32(record.cut_activations)

        def head_loss_of(rec: replay.StepRecord):
            def head_loss(features: Sequence[Tensor], weights: Optional[Tensor]):
                l_ct = replay.method_loss(self, self._iclmsr_method_cls, rec, features)
                if weights is None:
                    return l_ct, l_ct.new_zeros(())
                return l_ct, self._msr_loss(rec, features, weights)
            return head_loss

        generator = torch.Generator().manual_seed(self._iclmsr_seed() * 1_000_003
                                                  + int(self.global_step))
        raw = _float32(raw)
        with _trainable(self.msr), replay.replaying(self, record), twice_differentiable(self), \
                torch.autocast(raw.device.type, enabled=False):
            weights = self._proposals(raw)
            parallel = collectives.distributed()
            kwargs = dict(virtual_step=virtual_step, stage1_grads=stage1, plain_grads=plain,
                          weights=weights, generator=generator, diagnose=diagnose,
                          average_grads=collectives.average if parallel else None,
                          gather=collectives.gather if parallel else None,
                          encoder_params=None if tail is None else tail.parameter_names(),
                          subset_loss=lambda index: head_loss_of(record.subset(index)),
                          autocast_dtype=dtype, loss_scale=loss_scale)
            try:
                result = meta_step(encoder, head, self.msr, views, raw, head_loss_of(record),
                                   self.iclmsr, alpha, **kwargs)
            except NotImplementedError as error:
                if "forward AD" not in str(error) or self.iclmsr.meta_grad != "second_order" \
                        or self.iclmsr.exact_impl != "jvp":
                    raise
                # An operation of this backbone has no forward-mode derivative: use the other
                # exact path, the double backward, from now on.
                warnings.warn(f"iclmsr.exact_impl=jvp is not available for this backbone "
                              f"({error}); using exact_impl=double_backward.")
                self.iclmsr = dataclasses.replace(self.iclmsr, exact_impl="double_backward")
                result = meta_step(encoder, head, self.msr, views, raw, head_loss_of(record),
                                   self.iclmsr, alpha, **kwargs)
        # outside the replay: the gradients are averaged over the real process group, so the
        # finiteness below is the same on every rank
        self._average_msr_grads()
        finite = amp.all_finite(p.grad for p in self.msr.parameters())
        if loss_scale is not None:
            self._iclmsr_meta_scale.update(finite)
        if not finite:
            self.msr_optimizer.zero_grad(set_to_none=True)
            self._iclmsr_count("refused")
            return {}
        self.msr_optimizer.step()
        self.msr_optimizer.zero_grad(set_to_none=True)
        self._iclmsr_count("taken")
        metrics = {"train_meta_loss": result.meta_loss, "train_meta_grad_norm": result.grad_norm,
                   "train_meta_grad_norm_ct": result.ct_grad_norm,
                   "train_meta_grad_norm_uni": result.uni_grad_norm}
        if self.iclmsr.meta_grad != "none":
            metrics["train_meta_ct_virtual"] = result.ct_virtual
        if result.first_order_cos is not None:
            metrics.update({"diag/meta_first_order_norm": result.first_order_grad_norm,
                            "diag/meta_first_order_cos": result.first_order_cos,
                            "diag/meta_curvature_norm": result.curvature_grad_norm})
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        return {k: float(v) for k, v in metrics.items()}

    def _average_msr_grads(self) -> None:
        """f_msr's meta-gradients averaged over the ranks: the gradient of the global meta
        objective (each rank's is the part through its own images' strata)."""
        params = [p for p in self.msr.parameters() if p.grad is not None]
        for p, g in zip(params, collectives.average([p.grad for p in params])):
            p.grad = g

    # ---------------------------------------------------------------------------------------
    # schedule: two_stage
    # ---------------------------------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if not self.iclmsr.enabled or self.iclmsr.schedule != "two_stage":
            return
        optimizer = self.optimizers()
        for batch_idx, batch in enumerate(self.trainer.train_dataloader):
            if not self.iclmsr.should_meta_step(batch_idx):
                continue
            batch = self.trainer.strategy.batch_to_device(batch)
            batch = self.on_after_batch_transfer(batch, 0)
            self._iclmsr_pass_for_meta(batch, batch_idx, optimizer)

    def _iclmsr_pass_for_meta(self, batch: Sequence[Any], batch_idx: int, optimizer: Any) -> None:
        """Stage 2 of ``two_stage``: the method's forward again without side effects, then meta."""
        probe = replay.StepRecord(batch, batch_idx, state=replay.method_state(self))
        with replay.replaying(self, probe), torch.no_grad(), \
                replay.recording(self, batch, batch_idx) as record, self._recording_cut(record):
            self._iclmsr_method_cls.training_step(self, batch, batch_idx)
        record.state = probe.state
        self.iclmsr_meta_step(record, self._iclmsr_raw_images(batch), optimizer, reuse_grads=False)

    # ---------------------------------------------------------------------------------------
    # Checkpoints: f_msr's parameters are in the state dict; its optimizer state goes beside.
    # ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.iclmsr.enabled and self.msr_optimizer is not None:
            checkpoint["iclmsr_optimizer"] = self.msr_optimizer.state_dict()
            checkpoint["iclmsr_meta_counts"] = dict(self.iclmsr_meta_counts)
            checkpoint["iclmsr_meta_loss_scale"] = self._iclmsr_meta_scale.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.iclmsr.enabled and self.msr_optimizer is not None and "iclmsr_optimizer" in checkpoint:
            self.msr_optimizer.load_state_dict(checkpoint["iclmsr_optimizer"])
            self.iclmsr_meta_counts.update(checkpoint.get("iclmsr_meta_counts", {}))
            if "iclmsr_meta_loss_scale" in checkpoint:
                self._iclmsr_meta_scale.load_state_dict(checkpoint["iclmsr_meta_loss_scale"])


def _backbone_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate of the backbone's parameter group (solo names it)."""
    for group in optimizer.param_groups:
        if group.get("name") == "backbone":
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])
