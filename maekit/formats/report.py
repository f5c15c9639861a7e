"""What a load did, in one line: format, tensors, conversions, drops, missing and unused keys."""

from __future__ import annotations

from dataclasses import dataclass, field


def group_keys(keys: list[str], limit: int = 8) -> str:
    """``decoder_blocks.0.norm1.weight, ...`` -> ``decoder_* (52), mask_token``: short for logs."""
    groups: dict[str, int] = {}
    for k in keys:
        head = "decoder_*" if k.startswith("decoder_") else k.split(".")[0]
        head = head if head == k or head.endswith("*") else f"{head}.*"
        groups[head] = groups.get(head, 0) + 1
    parts = [g if n == 1 else f"{g} ({n})" for g, n in groups.items()]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


@dataclass
class LoadReport:
    path: str
    source: str  # the detected format, e.g. "PLSC Paddle checkpoint (.pd)"
    tensors: int = 0
    notes: list[str] = field(default_factory=list)  # conversions and drops, in order
    loaded: int | None = None  # set once loaded into a model
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing_label: str = "missing (model keeps its own values)"

    def summary(self) -> str:
        parts = [f"{self.path}: {self.source}, {self.tensors} tensors", *self.notes]
        if self.loaded is not None:
            parts.append(f"loaded {self.loaded} into the model")
            missing = sorted(self.missing)
            shown = group_keys(missing) if len(missing) > 8 else ", ".join(missing)
            parts.append(f"{self.missing_label}: {shown or 'none'}")
            if self.unused:
                parts.append(f"unused: {group_keys(sorted(self.unused))}")
        return "; ".join(parts)
