"""Checkpoint files of every format: one safe reader for PyTorch, PLSC Paddle, safetensors and
Hugging Face files, and converters to maekit / timm / safetensors / Hugging Face."""

from .loader import Checkpoint, detect_format, load_state_dict, read_checkpoint, read_file
from .report import LoadReport

__all__ = [
    "Checkpoint",
    "LoadReport",
    "detect_format",
    "load_state_dict",
    "read_checkpoint",
    "read_file",
]
