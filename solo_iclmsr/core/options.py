"""The options of ICL-MSR, as one plain dataclass the training loop can read.

Every field is a decision of ``design/ICLMSR.md`` (section 6 gives the defaults; section 7 the
open decisions): the paper's reading is always one of the values. ``None`` means "unset": it is
resolved at run time (``enabled`` from the method name, ``alpha`` from the current learning rate,
``tau_msr`` from the base method's temperature, ``msr_loss`` from the kind of method).

The dataclass is also the schema of the ``iclmsr`` block of a config (``solo_iclmsr.config``):
unknown keys and wrong types are rejected there, ranges and choices here (``validate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

META_GRAD_MODES = ("second_order", "finite_difference", "linearized", "none")
EXACT_IMPLS = ("jvp", "double_backward")
VIRTUAL_STEPS = ("sgd", "optimizer")
MSR_LOSS_FORMS = ("auto", "mixture", "mean")
META_PARAMS = ("all", "head")
SCHEDULES = ("interleaved", "two_stage")
UNI_OVER = ("image", "batch")
MSR_INPUTS = ("image", "features", "both")
WEIGHT_HEADS = ("softplus", "softmax")
STRATA = ("learned", "frozen", "random_fixed", "uniform")
META_PRECISIONS = ("float32", "autocast")


@dataclass
class ICLMSROptions:
    """Hyper-parameters of ICL-MSR (ICLMSR.md sections 6 and 7).

    Attributes:
        enabled: train with the regularizer; ``False`` trains the untouched method; ``None``
            follows the method name (``<name>_iclmsr`` on, ``<name>`` off).
        n_strata: number n of channel-weight vectors a_t proposed per image.
        lambda_msr: weight of L_msr in L_to = L_ct + lambda * L_msr.
        gamma_uni: weight of L_uni in the meta objective L_ct(theta') + gamma * L_uni.
        uni_t: temperature t of the Gaussian potential exp(2t a_i.a_j - 2t).
        uni_over: pairs L_uni spreads: ``image`` (the n vectors of one image, paper) or ``batch``
            (all B * n vectors of the batch, so that images also differ from each other).
        alpha: rate of the virtual step; ``None`` uses the current learning rate of f.
        virtual_step: ``sgd`` (theta' = theta - alpha g, paper) or ``optimizer`` (the update the
            real optimizer would take from g: its momentum, weight decay and LARS trust ratio,
            computed functionally; the optimizer's state is untouched).
        tau_msr: InfoNCE temperature of the mixture form; ``None`` uses the method's own, else 0.2.
        msr_loss: ``mixture`` (backdoor likelihood), ``mean`` (method loss averaged over strata) or
            ``auto`` (mixture for InfoNCE-type methods, mean for the others).
        strata: where A_s comes from: ``learned`` (f_msr trained by the meta step, paper);
            ablations: ``frozen`` (f_msr kept at its initialisation: image-dependent strata that
            are never trained), ``random_fixed`` (n non-negative unit vectors drawn once from the
            run's seed, the same for every image) or ``uniform`` (every a_t = 1/sqrt(c), so
            L_msr = L_ct). Only ``learned`` has a meta step.
        meta_grad: ``second_order`` (the exact meta-gradient), ``finite_difference`` (DARTS-style
            central differences along v = grad L_ct(theta')), ``linearized`` (first order in
            the step: v read at theta instead of theta', no virtual forward) or ``none`` (an
            ablation: no L_ct(theta') term, f_msr trained by gamma * L_uni alone).
        exact_impl: how ``second_order`` is computed: ``jvp`` (the backbone enters only through
            the Jacobian-vector product J_f v_f) or ``double_backward`` (the reference).
        fd_epsilon: finite-difference step of ``finite_difference`` and ``linearized``, as the
            norm of the parameter perturbation relative to the norm of the parameters.
        meta_every: run the meta step every k training batches.
        meta_params: ``all`` (virtual step of f and f_ph) or ``head`` (f_ph only, cheaper).
        meta_stages: ``None`` (the virtual step moves every stage of f, paper) or k: it moves
            only the last k stages of f (and f_ph); the activations entering them are the ones
            the training step computed, so the pass at theta' and the Jacobian-vector product
            run through those stages only (ANIL-style truncation).
        meta_batch: ``None`` (the whole batch, paper), a fraction in (0, 1] of the batch, or a
            count of images > 1: the meta objective and its Jacobian-vector product run on
            random sub-batches of that size (the virtual step keeps the whole batch's stage-1
            gradient); unbiased for losses that are means over images.
        meta_precision: the arithmetic of the meta step: ``float32`` (outside autocast, what the
            training step recorded cast up) or ``autocast`` (its forward passes and the
            directional derivative under the run's autocast dtype, float16 or bfloat16; a
            meta-gradient that is not finite is not applied). Without autocast both are float32.
        schedule: ``interleaved`` (stage 1 then stage 2 on every batch) or ``two_stage``
            (the paper's literal two passes per epoch).
        msr_input: what f_msr reads: ``image`` (the raw image, paper), ``features`` (the
            stop-gradient encoder feature map of the raw image: the channels a_t weights) or
            ``both``.
        weight_head: a_t from logits: ``softplus`` (normalize(softplus(l))) or ``softmax``
            (normalize(softmax(l / weight_temperature))).
        weight_temperature: temperature of the ``softmax`` weight head.
        weight_bias: whether f_msr's last layer has a bias (a fixed mask needs only the bias).
        msr_depth: number of conv-BN-ReLU blocks of f_msr.
        msr_width: channels of f_msr's conv blocks.
        msr_lr: learning rate of f_msr's Adam optimizer.
        msr_weight_decay: weight decay of f_msr's optimizer.
    """

    enabled: Optional[bool] = None
    strata: str = "learned"
    n_strata: int = 8
    lambda_msr: float = 1.0
    gamma_uni: float = 0.1
    uni_t: float = 2.0
    uni_over: str = "image"
    alpha: Optional[float] = None
    virtual_step: str = "sgd"
    tau_msr: Optional[float] = None
    msr_loss: str = "auto"
    meta_grad: str = "second_order"
    exact_impl: str = "jvp"
    fd_epsilon: float = 1e-4
    meta_every: int = 1
    meta_params: str = "all"
    meta_stages: Optional[int] = None
    meta_batch: Optional[float] = None
    meta_precision: str = "float32"
    schedule: str = "interleaved"
    msr_input: str = "image"
    weight_head: str = "softplus"
    weight_temperature: float = 1.0
    weight_bias: bool = True
    msr_depth: int = 4
    msr_width: int = 64
    msr_lr: float = 1e-3
    msr_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "iclmsr") -> "ICLMSROptions":
        """Check types, ranges and choices; raise ``ValueError`` naming the offending key."""

        def fail(key: str, value: Any, expected: str) -> None:
            raise ValueError(f"{prefix}.{key}={value!r} is invalid: expected {expected}.")

        def choice(key: str, allowed: tuple) -> None:
            if getattr(self, key) not in allowed:
                fail(key, getattr(self, key), "one of " + ", ".join(allowed))

        def number(key: str, low: float, integer: bool = False, open_low: bool = False,
                   optional: bool = False) -> None:
            value = getattr(self, key)
            if value is None and optional:
                return
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                fail(key, value, "an integer" if integer else "a number")
            if value <= low if open_low else value < low:
                fail(key, value, f"a value {'>' if open_low else '>='} {low}")

        def flag(key: str, optional: bool = False) -> None:
            value = getattr(self, key)
            if not (isinstance(value, bool) or (optional and value is None)):
                fail(key, value, "true or false" + (" (or null)" if optional else ""))

        flag("enabled", optional=True)
        choice("strata", STRATA)
        number("n_strata", 1, integer=True)
        number("lambda_msr", 0.0)
        number("gamma_uni", 0.0)
        number("uni_t", 0.0, open_low=True)
        choice("uni_over", UNI_OVER)
        number("alpha", 0.0, open_low=True, optional=True)
        choice("virtual_step", VIRTUAL_STEPS)
        number("tau_msr", 0.0, open_low=True, optional=True)
        choice("msr_loss", MSR_LOSS_FORMS)
        choice("meta_grad", META_GRAD_MODES)
        choice("exact_impl", EXACT_IMPLS)
        number("fd_epsilon", 0.0, open_low=True)
        number("meta_every", 1, integer=True)
        choice("meta_params", META_PARAMS)
        number("meta_stages", 1, integer=True, optional=True)
        if self.meta_stages is not None and self.meta_params == "head":
            fail("meta_stages", self.meta_stages, "null with meta_params=head (the virtual step "
                 "then moves no stage of f)")
        number("meta_batch", 0.0, open_low=True, optional=True)
        if self.meta_batch is not None and self.meta_batch > 1 and self.meta_batch != int(self.meta_batch):
            fail("meta_batch", self.meta_batch, "a fraction in (0, 1] or a whole number of images")
        if (self.meta_batch is not None and self.meta_grad == "second_order"
                and self.exact_impl == "double_backward"):
            fail("meta_batch", self.meta_batch, "null with exact_impl=double_backward (the "
                 "reference runs on the whole batch)")
        choice("meta_precision", META_PRECISIONS)
        choice("schedule", SCHEDULES)
        choice("msr_input", MSR_INPUTS)
        choice("weight_head", WEIGHT_HEADS)
        number("weight_temperature", 0.0, open_low=True)
        flag("weight_bias")
        number("msr_depth", 1, integer=True)
        number("msr_width", 1, integer=True)
        number("msr_lr", 0.0, open_low=True)
        number("msr_weight_decay", 0.0)
        return self

    @property
    def trains_regularizer(self) -> bool:
        """Whether f_msr is trained (``strata: learned``); the ablations have no meta step."""
        return self.strata == "learned"

    def should_meta_step(self, batch_idx: int) -> bool:
        """Whether the meta step runs on this batch (``meta_every``; never for the ablations
        ``frozen``, ``random_fixed`` and ``uniform``)."""
        return self.trains_regularizer and batch_idx % self.meta_every == 0

    def meta_batch_size(self, batch_size: int) -> int:
        """How many of ``batch_size`` images the meta objective uses (``meta_batch``), >= 1."""
        if self.meta_batch is None:
            return batch_size
        size = round(self.meta_batch * batch_size) if self.meta_batch <= 1 else int(self.meta_batch)
        return max(1, min(batch_size, size))
