"""maekit: MAE / ConvMAE pre-training, fine-tuning and linear probing of Vision Transformers."""

__version__ = "0.2.0"  # also the package version (pyproject reads it); see CHANGELOG.md

__all__ = ["__version__", "load_checkpoint"]


def __getattr__(name: str):
    # Imported on first use so that `import maekit` (and the CLI's start-up) stays light.
    if name == "load_checkpoint":
        from .checkpoint.pretrained import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'maekit' has no attribute {name!r}")
