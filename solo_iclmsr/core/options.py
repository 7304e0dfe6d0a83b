"""The options of ICL-MSR, as one plain dataclass the training loop can read.

Every field is a decision of ``design/ICLMSR.md`` (section 6 gives the defaults). ``None`` means
"unset": it is resolved at run time (``alpha`` from the current learning rate, ``tau_msr`` from the
base method's temperature, ``msr_loss`` from the kind of method).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

META_GRAD_MODES = ("second_order", "finite_difference")
EXACT_IMPLS = ("jvp", "double_backward")
MSR_LOSS_FORMS = ("auto", "mixture", "mean")
META_PARAMS = ("all", "head")
SCHEDULES = ("interleaved", "two_stage")


@dataclass
class ICLMSROptions:
    """Hyper-parameters of ICL-MSR (ICLMSR.md section 6).

    Attributes:
        enabled: train the method with the regularizer; ``False`` trains the untouched method.
        n_strata: number n of channel-weight vectors a_t proposed per image.
        lambda_msr: weight of L_msr in L_to = L_ct + lambda * L_msr.
        gamma_uni: weight of L_uni in the meta objective L_ct(theta') + gamma * L_uni.
        uni_t: temperature t of the Gaussian potential exp(2t a_i.a_j - 2t).
        alpha: rate of the virtual SGD step; ``None`` uses the current learning rate of f.
        tau_msr: InfoNCE temperature of the mixture form; ``None`` uses the method's own, else 0.2.
        msr_loss: ``mixture`` (backdoor likelihood), ``mean`` (method loss averaged over strata) or
            ``auto`` (mixture for InfoNCE-type methods, mean for the others).
        meta_grad: ``second_order`` (the exact meta-gradient) or ``finite_difference``
            (DARTS-style central differences of grad_A L_to at theta +- eps * v).
        exact_impl: how ``second_order`` is computed: ``jvp`` (default, the cheapest exact path:
            the backbone enters only through the Jacobian-vector product J_f v_f, no double
            backward through it) or ``double_backward`` (autograd.grad with create_graph=True
            through the whole model; the reference).
        meta_every: run the meta step every k training batches.
        meta_params: ``all`` (virtual step of f and f_ph) or ``head`` (f_ph only, cheaper).
        schedule: ``interleaved`` (stage 1 then stage 2 on every batch) or ``two_stage``
            (the paper's literal two passes per epoch).
        fd_epsilon: finite-difference scale; eps = fd_epsilon / ||v||.
        msr_depth: number of conv-BN-ReLU blocks of f_msr.
        msr_width: channels of f_msr's conv blocks.
        msr_lr: learning rate of f_msr's Adam optimizer.
        msr_weight_decay: weight decay of f_msr's optimizer.
    """

    enabled: bool = True
    n_strata: int = 8
    lambda_msr: float = 1.0
    gamma_uni: float = 0.1
    uni_t: float = 2.0
    alpha: Optional[float] = None
    tau_msr: Optional[float] = None
    msr_loss: str = "auto"
    meta_grad: str = "second_order"
    exact_impl: str = "jvp"
    meta_every: int = 1
    meta_params: str = "all"
    schedule: str = "interleaved"
    fd_epsilon: float = 0.01
    msr_depth: int = 4
    msr_width: int = 64
    msr_lr: float = 1e-3
    msr_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "iclmsr") -> "ICLMSROptions":
        """Check types and ranges; raise ``ValueError`` naming the offending key."""

        def fail(key: str, value: Any, expected: str) -> None:
            raise ValueError(f"{prefix}.{key}={value!r} is invalid: expected {expected}.")

        def choice(key: str, allowed: tuple) -> None:
            if getattr(self, key) not in allowed:
                fail(key, getattr(self, key), "one of " + ", ".join(allowed))

        def number(key: str, low: float, high: float = float("inf"), integer: bool = False,
                   open_low: bool = False, optional: bool = False) -> None:
            value = getattr(self, key)
            if value is None and optional:
                return
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                fail(key, value, "an integer" if integer else "a number")
            if (value <= low if open_low else value < low) or value > high:
                bound = f"{'>' if open_low else '>='} {low}"
                fail(key, value, f"a value {bound}" + ("" if high == float("inf") else f" and <= {high}"))

        if not isinstance(self.enabled, bool):
            fail("enabled", self.enabled, "true or false")
        number("n_strata", 1, integer=True)
        number("lambda_msr", 0.0)
        number("gamma_uni", 0.0)
        number("uni_t", 0.0, open_low=True)
        number("alpha", 0.0, open_low=True, optional=True)
        number("tau_msr", 0.0, open_low=True, optional=True)
        choice("msr_loss", MSR_LOSS_FORMS)
        choice("meta_grad", META_GRAD_MODES)
        choice("exact_impl", EXACT_IMPLS)
        number("meta_every", 1, integer=True)
        choice("meta_params", META_PARAMS)
        choice("schedule", SCHEDULES)
        number("fd_epsilon", 0.0, open_low=True)
        number("msr_depth", 1, integer=True)
        number("msr_width", 1, integer=True)
        number("msr_lr", 0.0, open_low=True)
        number("msr_weight_decay", 0.0)
        return self

    @classmethod
    def from_mapping(cls, cfg: Optional[Mapping[str, Any]], prefix: str = "iclmsr") -> "ICLMSROptions":
        """Build from a config mapping; unknown keys fail naming the nearest valid one."""
        import difflib

        cfg = dict(cfg or {})
        names = [f.name for f in fields(cls)]
        for key in cfg:
            if key not in names:
                near = difflib.get_close_matches(str(key), names, n=1)
                hint = f" Did you mean {prefix}.{near[0]}?" if near else f" Valid keys: {', '.join(names)}."
                raise ValueError(f"Unknown config key {prefix}.{key}.{hint}")
        options = cls.__new__(cls)
        for f in fields(cls):
            setattr(options, f.name, cfg.get(f.name, f.default))
        return options.validate(prefix)

    def should_meta_step(self, batch_idx: int) -> bool:
        """Whether the meta step runs on this batch (``meta_every``)."""
        return batch_idx % self.meta_every == 0
