"""Turn the chain's log.txt files into a Markdown table (top-1 of the last and best epoch, wall time)."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = [
    ("pretrain", "MAE pre-training"),
    ("finetune_mae", "fine-tune from MAE"),
    ("finetune_random", "fine-tune from random init"),
    ("linprobe_mae", "linear probe of MAE encoder"),
    ("linprobe_random", "linear probe of random-init encoder"),
]
print("| run | epochs | final train loss | test top-1 (last) | test top-1 (best) | wall time |")
print("| --- | --- | --- | --- | --- | --- |")
total = 0.0
for name, label in rows:
    log_path = out / name / "log.txt"
    if not log_path.is_file():
        continue
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    wall = log[-1]["wall_time_s"]
    total += wall
    last = f"{log[-1]['test_acc1'] / 100:.4f}" if "test_acc1" in log[-1] else "-"
    best = f"{max(r['test_acc1'] for r in log) / 100:.4f}" if "test_acc1" in log[-1] else "-"
    print(
        f"| {label} | {len(log)} | {log[-1]['train_loss']:.4f} | {last} | {best} | {wall / 60:.1f} min |"
    )
print(f"\nTotal training wall time: {total / 60:.1f} min")
