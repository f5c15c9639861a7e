"""Checkpoints from elsewhere: one safe loader for PyTorch, PLSC Paddle and safetensors files,
and converters to maekit / timm / safetensors."""

from .loader import Checkpoint, detect_format, load_checkpoint, load_state_dict, read_file
from .report import LoadReport

__all__ = [
    "Checkpoint",
    "LoadReport",
    "detect_format",
    "load_checkpoint",
    "load_state_dict",
    "read_file",
]
