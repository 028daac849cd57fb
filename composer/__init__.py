"""LoRAtorio multi-LoRA composition on stock diffusers pipelines (plus base/merge/switch/composite)."""
from composer.api import METHODS, Composer, Job, LoratorioParams, Result, compose, load_pipeline  # noqa: F401
from composer.loras import LoraError, LoraRef  # noqa: F401
