"""The last k stages of a backbone as a module of their own: the truncated virtual step.

``iclmsr.meta_stages: k`` moves only the last k stages of f (and f_ph) in the virtual step
(ANIL-style). The activations entering those stages do not depend on what moves, so the training
step's own are kept (:meth:`EncoderTail.recording`, no recomputation) and the meta step runs the
pass at theta' and the Jacobian-vector product through :class:`EncoderTail` only: with the four
equal-cost stages of a CIFAR ResNet, k = 1 costs a quarter of the full meta step's encoder work.

Where the cut lies: the output of the module that ends stage ``-(k+1)``, read from the backbone's
own list of stages: timm's ``feature_info`` (timm ResNets, ConvNeXt, EfficientNet, ViTs, whose
stages are their blocks: "last k blocks"), and ``maxpool``, ``layer1`` .. ``layer4`` for solo's
torchvision ResNets. Which modules lie before the cut (the *trunk*) is read once from the
execution order of a real forward; the trunk's parameters are constants of the virtual step, as
are parameters held by a module that contains the cut (a ViT's class token and position
embedding, used before its blocks).

The tail's forward is the backbone's own forward with the trunk stood in for: the module that
ends at the cut hands out the given activation, the others hand out zeros of the shape they had
(so whatever the backbone does between them, such as adding a position embedding, runs on
numbers that are then replaced), so no architecture-specific code is needed beyond the list of
stages.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

from torch import Tensor, nn

__all__ = ["stage_ends", "EncoderTail"]

Shape = Tuple[int, ...]


def stage_ends(backbone: nn.Module) -> List[str]:
    """Names of the modules whose outputs end the backbone's stages, first to last.

    Raises:
        ValueError: for a backbone without a known list of stages (naming ``iclmsr.meta_stages``).
    """
    from torchvision.models import ResNet

    from solo_iclmsr.plugin.backbones import TimmBackbone

    if isinstance(backbone, TimmBackbone):
        return ["model." + info["module"] for info in _feature_info(backbone.model)]
    if isinstance(backbone, ResNet):
        return ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    info = _feature_info(backbone)
    if info:
        return [entry["module"] for entry in info]
    raise ValueError(f"iclmsr.meta_stages: a {type(backbone).__name__} backbone has no list of "
                     f"stages (timm's feature_info); use iclmsr.meta_stages=null.")


def _feature_info(model: nn.Module) -> List[Dict]:
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    return list(info.info if hasattr(info, "info") else info)


class _Given(nn.Module):
    """Stands in for a trunk module: returns a prepared tensor; any other attribute is the real
    module's (the backbone may read one, e.g. a ViT its patch embedding's grid size)."""

    def __init__(self, value: Tensor, real: nn.Module) -> None:
        super().__init__()
        self.value = value
        self.__dict__["_real"] = real  # not a submodule

    def forward(self, *args, **kwargs) -> Tensor:  # noqa: ANN002, ANN003
        return self.value

    def __getattr__(self, name: str):  # noqa: ANN204
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_real"], name)


class EncoderTail(nn.Module):
    """f after the cut: ``tail(a)`` is ``backbone(x)`` for any x whose activation at the cut is
    ``a`` (the pooled features). Its parameters are the backbone's (as ``backbone.<name>``);
    :meth:`parameter_names` lists those the truncated virtual step moves.

    Args:
        backbone: the method's backbone.
        stages: k, the number of last stages in the tail (1 <= k < number of stages).
    """

    def __init__(self, backbone: nn.Module, stages: int) -> None:
        super().__init__()
        ends = stage_ends(backbone)
        if not 1 <= stages < len(ends):
            raise ValueError(f"iclmsr.meta_stages={stages} is invalid for this backbone: it has "
                             f"{len(ends)} stages ({', '.join(ends)}); expected 1 to "
                             f"{len(ends) - 1}.")
        self.backbone = backbone
        self.cut = ends[-(stages + 1)]
        self.stages = stages
        self._trunk: Optional[List[str]] = None  # the outermost modules before the cut
        self._trunk_params: Optional[set] = None
        self._shapes: Dict[Shape, List[Shape]] = {}  # cut shape -> trunk output shapes
        self._versions: List[Tuple[Tensor, int]] = []  # the last recording's activations

    # -----------------------------------------------------------------------------------------
    # During the training step
    # -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, activations: List[Tensor]) -> Iterator[None]:
        """Inside the block, every backbone call appends its activation at the cut (detached)
        to ``activations``; the first block also reads which modules form the trunk."""
        modules = dict(self.backbone.named_modules())
        watched = self._trunk if self._trunk is not None else list(modules)
        order: Dict[str, Tuple[int, int]] = {}  # name -> (first start, last end), first block
        shapes: Dict[str, Shape] = {}  # of the current backbone call
        calls: List[Tuple[Shape, Dict[str, Shape]]] = []
        tick = iter(range(1 << 62))

        def started(name: str) -> None:
            if self._trunk is None and name not in order:
                order[name] = (next(tick), -1)

        def ended(name: str, out: object) -> None:
            if self._trunk is None:
                order[name] = (order[name][0], next(tick))
            if isinstance(out, Tensor):
                shapes[name] = tuple(out.shape[1:])
            if name == self.cut:
                activations.append(out.detach())
                self._versions.append((activations[-1], out._version))
                calls.append((tuple(out.shape[1:]), dict(shapes)))
                shapes.clear()

        self._versions = []
        hooks = []
        for name in watched:
            module = modules[name]
            hooks.append(module.register_forward_pre_hook(lambda *_, n=name: started(n)))
            hooks.append(module.register_forward_hook(lambda _m, _i, out, n=name: ended(n, out)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
        if self._trunk is None and calls:
            self._set_trunk(order, modules)
        for cut_shape, trunk_shapes in calls:
            self._shapes.setdefault(cut_shape, [trunk_shapes[n] for n in self._trunk])

    def _set_trunk(self, order: Dict[str, Tuple[int, int]], modules: Dict[str, nn.Module]) -> None:
        """The trunk: modules that end no later than the cut; stood in for by their outermost
        members. Its parameters, and those held directly by a module containing the cut, are
        constants of the virtual step."""
        cut_end = order[self.cut][1]
        before = {name for name, (_, end) in order.items() if 0 <= end <= cut_end and name}
        self._trunk = sorted((name for name in before if _parent(name) not in before),
                             key=lambda name: order[name][0])
        owners = before | {"", *_ancestors(self.cut)}
        self._trunk_params = {f"{owner}.{p}" if owner else p for owner in owners
                              for p, _ in modules[owner].named_parameters(recurse=False)}

    def check_unchanged(self) -> None:
        """The recorded activations were not modified in place since (by a tail module that
        writes into its input); else they are not what the training step computed."""
        if any(a._version != version for a, version in self._versions):
            raise RuntimeError(f"iclmsr.meta_stages: a module after {self.cut} modified its input "
                               f"in place, so the recorded activations are stale; use "
                               f"iclmsr.meta_stages=null for this backbone.")

    def parameter_names(self) -> List[str]:
        """Names (in this module, ``backbone.<name>``) of the parameters after the cut that
        require grad: what the truncated virtual step moves. Known after the first
        :meth:`recording`."""
        if self._trunk_params is None:
            raise RuntimeError("EncoderTail: the trunk is read from the first recorded step.")
        return ["backbone." + name for name, p in self.backbone.named_parameters()
                if p.requires_grad and name not in self._trunk_params]

    # -----------------------------------------------------------------------------------------
    # In the meta step
    # -----------------------------------------------------------------------------------------
    def forward(self, activation: Tensor) -> Tensor:
        """The backbone's output for inputs whose activation at the cut is ``activation``."""
        if self._trunk is None:
            raise RuntimeError("EncoderTail: the trunk is read from the first recorded step.")
        shapes = self._shapes.get(tuple(activation.shape[1:]))
        if shapes is None:
            raise RuntimeError(f"EncoderTail: no recorded step had an activation of shape "
                               f"{tuple(activation.shape[1:])} at {self.cut}.")
        batch = activation.shape[0]
        stand_ins = {name: _Given(activation if name == self.cut else
                                  activation.new_zeros((batch, *shape)),
                                  self.backbone.get_submodule(name))
                     for name, shape in zip(self._trunk, shapes)}
        with _swapped(self.backbone, stand_ins):
            return self.backbone(activation)


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _ancestors(name: str) -> List[str]:
    out = []
    while name:
        name = _parent(name)
        out.append(name)
    return out


@contextlib.contextmanager
def _swapped(root: nn.Module, stand_ins: Dict[str, nn.Module]) -> Iterator[None]:
    """The named submodules of ``root`` replaced for the duration."""
    real = {}
    for name, module in stand_ins.items():
        parent = root.get_submodule(_parent(name))
        child = name.rsplit(".", 1)[-1]
        real[name] = parent._modules[child]
        parent._modules[child] = module
    try:
        yield
    finally:
        for name, module in real.items():
            root.get_submodule(_parent(name))._modules[name.rsplit(".", 1)[-1]] = module
