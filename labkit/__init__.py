"""labkit: the helper package behind the DPO Lab notebooks.

Modules have one job each (see DESIGN.md): config, models, teaching, generation, data,
dpo, health, metrics, viz, artifacts, release. Import what you use explicitly, e.g.
`from labkit.models import load_model`.
"""
__version__ = "0.1.0"
