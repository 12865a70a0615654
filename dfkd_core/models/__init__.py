"""Model zoo: `create_model(name, num_classes, in_channels, image_size)` over a registry (timm style)."""
from dfkd_core.models import bn_cnn, imported, lenet, pruned, resnet_cifar, tv_models  # noqa: F401  (fill the registry)
from dfkd_core.models.checkpoint import (Checkpoint, CheckpointError, load_checkpoint, load_tensors,
                                         save_checkpoint)
from dfkd_core.models.registry import (check_from_scratch, create_model, describe_model, list_models,
                                       register_model)

__all__ = ["Checkpoint", "CheckpointError", "check_from_scratch", "create_model", "describe_model", "list_models",
           "load_checkpoint", "load_tensors", "register_model", "save_checkpoint"]
