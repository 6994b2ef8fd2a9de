"""labkit: the helper package behind the DPO Lab notebooks.

Modules have one job each (docs/architecture.md lists them): config, models, teaching,
generation, data, dpo, health, metrics, viz, steps, artifacts, release, ... Import what you
use explicitly, e.g. `from labkit.models import load_model`.
"""
__version__ = "0.1.0"
