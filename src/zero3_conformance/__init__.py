"""zero3-conformance: checks that Hugging Face models are built correctly under DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
