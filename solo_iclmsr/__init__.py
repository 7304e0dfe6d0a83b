"""solo-iclmsr: ICL-MSR for every self-supervised method of solo-learn."""

__version__ = "0.1.0"
