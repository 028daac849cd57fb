"""loraregistry: a retrieval-backed LoRA registry with a LoRAtorio composer.

The public Python API lives here; the CLI (``loraregistry.cli``) is a thin layer over it.
"""
