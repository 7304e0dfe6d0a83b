"""ICL-MSR core in pure torch: the regularizer f_msr, the losses, the meta step and the
diagnostics of the strata.

Imports torch only (no Lightning, no solo-learn); ``design/ICLMSR.md`` describes the algorithm.

Typical use inside a training step (interleaved schedule)::

    weights = regularizer(raw)                              # A_s (B, n, c), with its graph
    features = [encoder(x) for x in views]
    l_to, l_ct, l_msr = total_loss(features, weights, head_loss, options.lambda_msr)
    l_to.backward()                                         # stage 1: f and f_ph only
    if options.should_meta_step(batch_idx):
        meta_step(encoder, head, regularizer, views, raw, head_loss, options,
                  alpha=resolve_alpha(options, lr), stage1_grads=collect_grads(encoder, head),
                  weights=weights)                          # stage 2: f_msr's .grad only
    optimizer.step(); meta_optimizer.step()
"""

from .diagnostics import (StrataDiagnostics, effective_channels, foreground_channels,
                          foreground_share, gradient_cosine, strata_diagnostics,
                          variance_explained)
from .losses import (HeadLoss, StratumLoss, info_nce, info_nce_log_prob, infonce_head_loss,
                     mixture_of_log_probs, msr_loss, strata, uniformity_loss)
from .meta_step import (MetaStepResult, PlainGrads, collect_grads, frozen_batch_norm, meta_step,
                        resolve_alpha, total_loss)
from .options import ICLMSROptions
from .regularizer import (FixedStrata, MetaSemanticRegularizer, build_strata, channel_weights,
                          pooled_weighted_features, weight_features, weighted_views)
from .virtual_step import VirtualStep, optimizer_step, sgd_step

__all__ = [
    "ICLMSROptions",
    "MetaSemanticRegularizer",
    "FixedStrata",
    "build_strata",
    "channel_weights",
    "weight_features",
    "weighted_views",
    "pooled_weighted_features",
    "HeadLoss",
    "StratumLoss",
    "strata",
    "msr_loss",
    "info_nce",
    "info_nce_log_prob",
    "mixture_of_log_probs",
    "uniformity_loss",
    "infonce_head_loss",
    "MetaStepResult",
    "PlainGrads",
    "meta_step",
    "total_loss",
    "collect_grads",
    "resolve_alpha",
    "frozen_batch_norm",
    "VirtualStep",
    "sgd_step",
    "optimizer_step",
    "StrataDiagnostics",
    "strata_diagnostics",
    "effective_channels",
    "variance_explained",
    "foreground_channels",
    "foreground_share",
    "gradient_cosine",
]
