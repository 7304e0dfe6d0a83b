"""solo-iclmsr: ICL-MSR (Interventional Contrastive Learning with Meta Semantic Regularizer,
ICML 2022) for every self-supervised method of solo-learn."""

__version__ = "0.2.0"
