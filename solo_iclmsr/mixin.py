"""The Lightning side of ICL-MSR: one mixin that adds the regularizer to any solo-learn method.

Per training batch, with ``schedule: interleaved`` (ICLMSR.md section 4):

* stage 1, in ``training_step``: the method's own step runs untouched (its loss, logging, queue
  and centre updates); then A_s = f_msr(X) (no graph: f_msr is not trained by L_to [paper]) weights
  the encoder's per-view features and L_msr is computed by replaying the method's loss
  (``solo_iclmsr.adapters``). The step returns L_to = L_method + lambda * L_msr, so Lightning's
  backward, gradient accumulation, mixed precision, clipping, LARS and schedulers work as usual.
* stage 2, in ``on_before_optimizer_step``: the gradients of L_to are in ``.grad`` and the
  parameters are still theta, exactly what the virtual step theta' = theta - alpha grad L_to needs,
  so they are reused; ``core.meta_step`` leaves dM/dphi in f_msr's ``.grad`` and f_msr's own
  optimizer (Adam) steps. With gradient accumulation the accumulated gradient is not the last
  batch's, so it is recomputed on that batch instead.

``schedule: two_stage`` runs the paper's literal two passes: no meta step during the epoch, then
a second pass over the training data that updates only f_msr.

Distributed: f_msr's parameters are kept ``requires_grad=False`` outside the meta step, so DDP
neither registers nor waits for them; its meta-gradients are averaged across ranks by hand before
its optimizer steps. The meta step calls the bare encoder and heads, never the DDP wrapper, and
asks autograd for gradients with ``torch.autograd.grad``, so DDP's reducer is not involved.
solo-learn 1.0.2's contrastive losses take their negatives from the local batch (only MoCo's queue
is filled with gathered keys, under ``no_grad``), so the meta objective uses local negatives, as the
method does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from solo_iclmsr import adapters
from solo_iclmsr.backbones import create_backbone
from solo_iclmsr.core.losses import mixture_of_log_probs, uniformity_loss
from solo_iclmsr.core.meta_step import collect_grads, meta_step, resolve_alpha
from solo_iclmsr.core.options import ICLMSROptions
from solo_iclmsr.core.regularizer import MetaSemanticRegularizer, weight_features


class TimmBackboneMixin:
    """Builds solo's ``encoder`` (and ``momentum_encoder``) with ``timm.create_model``.

    solo's ``encoder`` argument is any timm model name; ``backbone_args`` may hold ``cifar``
    (3x3 stride-1 stem without max-pool for ResNets) and ``kwargs`` for ``timm.create_model``.
    """

    def build_encoder(self) -> "tuple[nn.Module, int]":
        args = dict(self.backbone_args or {})
        cifar = bool(args.pop("cifar", False))
        kwargs = dict(args.pop("kwargs", None) or {})
        kwargs.update(args)
        backbone = create_backbone(self.encoder_name, cifar=cifar, **kwargs)
        return backbone, backbone.num_features


class DeviceAugmentationMixin:
    """Augments raw batches on the device, after Lightning moved them there.

    With ``set_device_augmentation(aug)`` (a ``solo_iclmsr.augment.MultiViewAugmentation``), a
    raw batch ``(indexes, images uint8 (B, 3, H, W), targets)`` becomes solo's
    ``[indexes, [view, ...], targets]`` in ``on_after_batch_transfer``, and the raw images,
    resized and normalised, are kept for f_msr. Batches that already hold views pass unchanged.
    """

    def set_device_augmentation(self, augmentation: Optional[nn.Module]) -> None:
        self.device_augmentation = augmentation

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        augmentation = getattr(self, "device_augmentation", None)
        if augmentation is None or not isinstance(batch[1], Tensor) or batch[1].dtype != torch.uint8:
            return batch
        indexes, images, targets = batch
        self._iclmsr_raw = augmentation.raw_view(images)
        return [indexes, augmentation(images), targets]


def _views(batch: Sequence[Any]) -> list:
    """The crops of a solo batch ``[indexes, views, targets]`` as a list."""
    return list(batch[1]) if isinstance(batch[1], (list, tuple)) else [batch[1]]


def _float32(obj: Any) -> Any:
    """Half-precision tensors (also inside lists and dicts) as float32; the rest unchanged."""
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float32(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    return obj


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


class ICLMSRMixin:
    """Adds ICL-MSR to a solo-learn method class; put it first among the bases.

    The registry builds ``<name>_iclmsr`` variants as ``type(..., (ICLMSRMixin,
    DeviceAugmentationMixin, TimmBackboneMixin, Method, ReplayPoint), ...)``. Extra constructor
    argument: ``iclmsr`` (a mapping of ``ICLMSROptions`` fields, or an ``ICLMSROptions``). With
    ``enabled: false`` the variant trains exactly the original method.
    """

    _iclmsr_method_cls: type
    _iclmsr_adapter: "adapters.MethodAdapter"

    def __init__(self, *args: Any, iclmsr: Union[None, Mapping[str, Any], ICLMSROptions] = None,
                 **kwargs: Any) -> None:
        options = iclmsr if isinstance(iclmsr, ICLMSROptions) else ICLMSROptions.from_mapping(iclmsr)
        super().__init__(*args, **kwargs)
        self.iclmsr = options
        self._iclmsr_raw: Optional[Tensor] = None
        self._iclmsr_pending: Optional[Dict[str, Any]] = None
        if options.enabled:
            self.msr_form = self._iclmsr_adapter.msr_form(options.msr_loss)
            self.msr = MetaSemanticRegularizer(self.features_dim, options.n_strata,
                                               options.msr_depth, options.msr_width)
            self.msr.requires_grad_(False)  # trained only by the meta step, see module docstring
            # torch has neither forward-mode nor double-backward derivatives for fused attention
            # kernels: attention of the backbones (timm's ``fused_attn``) runs unfused.
            for module in list(self.encoder.modules()) + list(
                    getattr(self, "momentum_encoder", nn.Identity()).modules()):
                if getattr(module, "fused_attn", False):
                    module.fused_attn = False
            self.msr_optimizer = torch.optim.Adam(self.msr.parameters(), lr=options.msr_lr,
                                                  weight_decay=options.msr_weight_decay)

    # ---------------------------------------------------------------------------------------
    # Stage 1
    # ---------------------------------------------------------------------------------------
    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        if not self.iclmsr.enabled:
            return loss
        outputs = self._iclmsr_outputs_of(batch, batch_idx)
        raw = self._iclmsr_raw_images(batch)
        with torch.no_grad():
            weights = self.msr(raw)  # A_s (B, n, c)
        with self._replaying(outputs):
            l_msr = self._msr_loss(outputs["shared"]["feats"], weights, outputs)
        self.log_dict({"train_msr_loss": l_msr.detach(),
                       "train_uni_loss": uniformity_loss(weights, self.iclmsr.uni_t)},
                      on_epoch=True, sync_dist=True)
        if self.iclmsr.schedule == "interleaved" and self.iclmsr.should_meta_step(batch_idx):
            self._iclmsr_pending = {"outputs": outputs, "raw": raw}
        return loss + self.iclmsr.lambda_msr * l_msr

    def _iclmsr_outputs_of(self, batch: Sequence[Any], batch_idx: int) -> Dict[str, Any]:
        shared = self.__dict__.pop("_iclmsr_outputs")
        state = self.__dict__.pop("_iclmsr_state")
        outputs = {"shared": {k: v for k, v in shared.items() if k != "loss"}, "batch": batch,
                   "batch_idx": batch_idx, "views": _views(batch), "state": state,
                   "tau_msr": self._iclmsr_adapter.tau_msr(self, self.iclmsr.tau_msr)}
        return outputs

    def _iclmsr_raw_images(self, batch: Sequence[Any]) -> Tensor:
        """What f_msr sees: the raw batch (resized, normalised) when the device augmentation
        provided it; else the first large crop (solo's own data loaders give no raw image)."""
        return self._iclmsr_raw if self._iclmsr_raw is not None else _views(batch)[0]

    @contextlib.contextmanager
    def _replaying(self, outputs: Dict[str, Any]) -> Iterator[None]:
        """Replays of the method's loss see its pre-step state and leave no trace."""
        with adapters.side_effects_suppressed(self, outputs["state"]):
            if "constants" not in outputs:
                outputs["constants"] = adapters.constants_for(
                    self._iclmsr_adapter.name, self, outputs["shared"])
            yield

    def _msr_loss(self, feats: Sequence[Tensor], weights: Tensor, outputs: Mapping[str, Any]) -> Tensor:
        """L_msr on a_t-weighted per-view features, in the configured reading (ICLMSR.md 3)."""
        weighted = [weight_features(f, weights) for f in feats]  # each (B, n, c)
        n = weights.shape[1]
        strata = [[w[:, t] for w in weighted] for t in range(n)]
        if self.msr_form == "mixture":
            return mixture_of_log_probs(torch.stack(
                [self._iclmsr_adapter.positive_log_probs(self, s, outputs) for s in strata]))
        return sum(adapters.method_loss(self, s, outputs) for s in strata) / n

    # ---------------------------------------------------------------------------------------
    # Stage 2
    # ---------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer: Any) -> None:
        super().on_before_optimizer_step(optimizer)
        pending, self._iclmsr_pending = self._iclmsr_pending, None
        if pending is None:
            return
        reuse = getattr(self.trainer, "accumulate_grad_batches", 1) == 1
        self.iclmsr_meta_step(pending["outputs"], pending["raw"], self._encoder_lr(optimizer), reuse)

    def iclmsr_meta_step(self, outputs: Mapping[str, Any], raw: Tensor, lr: float,
                         reuse_grads: bool = False) -> Dict[str, float]:
        """Stage 2 on one batch: update f_msr by the meta-gradient; return what it measured."""
        head = nn.ModuleDict({name: getattr(self, name) for name in adapters.head_module_names(self)})
        stage1 = collect_grads(self.encoder, head) if reuse_grads else None

        def head_loss(features: Sequence[Tensor], weights: Optional[Tensor]):
            l_ct = adapters.method_loss(self, features, outputs)
            if weights is None:
                return l_ct, l_ct.new_zeros(())
            return l_ct, self._msr_loss(features, weights, outputs)

        alpha = resolve_alpha(self.iclmsr, lr)
        if alpha <= 0:  # e.g. warm-up from lr 0: theta' = theta, L_ct(theta') does not depend on A
            return {}
        # The meta step runs in float32, outside autocast (forward-mode AD and autocast do not
        # mix); what the mixed-precision training step captured is cast up.
        outputs = {**outputs, "shared": _float32(outputs["shared"])}
        if "constants" in outputs:
            outputs["constants"] = _float32(outputs["constants"])
        with _trainable(self.msr), self._replaying(outputs):
            with torch.enable_grad():
                weights = self.msr(raw)
            try:
                result = meta_step(self.encoder, head, self.msr, outputs["views"], raw, head_loss,
                                   self.iclmsr, alpha, stage1_grads=stage1, weights=weights)
            except NotImplementedError as error:
                if "forward AD" not in str(error) or self.iclmsr.exact_impl != "jvp":
                    raise
                # An operation of this backbone (e.g. fused CPU attention) has no forward-mode
                # derivative: use the other exact path, the double backward, from now on.
                warnings.warn(f"iclmsr.exact_impl=jvp is not available for this backbone ({error}); "
                              f"using exact_impl=double_backward.")
                self.iclmsr = dataclasses.replace(self.iclmsr, exact_impl="double_backward")
                result = meta_step(self.encoder, head, self.msr, outputs["views"], raw, head_loss,
                                   self.iclmsr, alpha, stage1_grads=stage1, weights=weights)
            self._average_msr_grads()
            self.msr_optimizer.step()
            self.msr_optimizer.zero_grad(set_to_none=True)
        metrics = {"train_meta_loss": result.meta_loss, "train_meta_ct_virtual": result.ct_virtual,
                   "train_meta_grad_norm": result.grad_norm}
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        return {k: float(v) for k, v in metrics.items()}

    def _average_msr_grads(self) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for p in self.msr.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(dist.get_world_size())

    def _encoder_lr(self, optimizer: Any) -> float:
        groups = getattr(optimizer, "param_groups", None) or optimizer.optimizer.param_groups
        for group in groups:
            if group.get("name") == "encoder":
                return float(group["lr"])
        return float(groups[0]["lr"])

    # ---------------------------------------------------------------------------------------
    # schedule: two_stage
    # ---------------------------------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if not self.iclmsr.enabled or self.iclmsr.schedule != "two_stage":
            return
        optimizer = self.optimizers()
        lr = self._encoder_lr(optimizer)
        for batch_idx, batch in enumerate(self.trainer.train_dataloader):
            if not self.iclmsr.should_meta_step(batch_idx):
                continue
            batch = self.trainer.strategy.batch_to_device(batch)
            batch = self.on_after_batch_transfer(batch, 0)
            self._iclmsr_pass_for_meta(batch, batch_idx, lr)

    def _iclmsr_pass_for_meta(self, batch: Sequence[Any], batch_idx: int, lr: float) -> None:
        """Stage 2 of ``two_stage``: the shared forward again, without side effects, then meta."""
        state = adapters.buffer_state(self)
        with adapters.side_effects_suppressed(self, state):
            shared = adapters.shared_forward(self, batch, batch_idx)
        self._iclmsr_outputs, self._iclmsr_state = shared, state
        outputs = self._iclmsr_outputs_of(batch, batch_idx)
        self.iclmsr_meta_step(outputs, self._iclmsr_raw_images(batch), lr, reuse_grads=False)

    # ---------------------------------------------------------------------------------------
    # Checkpoints: f_msr's parameters are in the state dict; its optimizer state goes beside.
    # ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.iclmsr.enabled:
            checkpoint["iclmsr_optimizer"] = self.msr_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.iclmsr.enabled and "iclmsr_optimizer" in checkpoint:
            self.msr_optimizer.load_state_dict(checkpoint["iclmsr_optimizer"])
