"""Synthesis of images from a teacher: model inversion (DeepDream / DeepInversion / ADI)."""
from dfkd_core.synthesis.inversion import (DATASET_DEFAULTS, LIVE_PARAMETERS, METHODS, PRESETS, ModelInversion,
                                           SynthesisConfig)

__all__ = ["DATASET_DEFAULTS", "LIVE_PARAMETERS", "METHODS", "PRESETS", "ModelInversion", "SynthesisConfig"]
