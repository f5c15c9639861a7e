"""maekit: MAE / ConvMAE pre-training, fine-tuning and linear probing of Vision Transformers."""

__version__ = "0.1.0"
