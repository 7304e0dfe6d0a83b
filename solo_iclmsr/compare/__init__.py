"""Paired comparisons of a pretraining config with and without ICL-MSR (``solo-iclmsr compare``):
the grid of arms and seeds (``grid``), one job per run launched by Hydra's launchers (``job``,
``launch``), its evaluation (``evaluate``) and its report (``report``)."""
