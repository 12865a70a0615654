"""The data-free applications of synthesized images (methods.md#applications; Yin et al. 2020): pruning, quantization
calibration and continual learning, each a `Job` with its config, saved with its run (results.json)."""
from dfkd_core.applications.common import ApplicationJob, recalibrate_bn_statistics
from dfkd_core.applications.continual import ContinualConfig, ContinualJob
from dfkd_core.applications.pruning import PruningConfig, PruningJob
from dfkd_core.applications.quantization import QuantizationConfig, QuantizationJob

__all__ = ["ApplicationJob", "ContinualConfig", "ContinualJob", "PruningConfig", "PruningJob", "QuantizationConfig",
           "QuantizationJob", "recalibrate_bn_statistics"]
