"""The model zoo: named, frozen architecture variants of the papers' models.

Each family file registers itself on import; they are imported explicitly here (docs/conventions.md, "The model
zoo").
"""

from zoo import block_sharing, classical, dcgan, ddpm_unet, null, score_net, toy_mlp, vdiff_unet  # noqa: E402,F401  (registers every name)
from zoo.registry import (
    Entry,
    Family,
    ZooError,
    apply_overrides,
    build,
    build_from_config,
    closest_hint,
    closest_names,
    config,
    describe,
    entry,
    families,
    family_of,
    flops,
    get_family,
    names,
    param_count,
    parametric_example,
    parametric_forms,
    register,
    register_family,
)

__all__ = [
    "Entry",
    "Family",
    "ZooError",
    "apply_overrides",
    "build",
    "build_from_config",
    "closest_hint",
    "closest_names",
    "config",
    "describe",
    "entry",
    "families",
    "family_of",
    "get_family",
    "flops",
    "names",
    "param_count",
    "parametric_example",
    "parametric_forms",
    "register",
    "register_family",
]
