"""The PNG chart of `byolctl profile --plot`: kernel speedups and whole-step throughput."""

from pathlib import Path
from typing import Any


def plot_profile(result: dict[str, Any], path: Path) -> None:
    """Two panels: each operation's implementations as speedup over its per-tensor (eager)
    baseline, and images/s of each whole-step variant."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    figure, (ops_axis, step_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    names, centers = [], []
    for index, op in enumerate(dict.fromkeys(row["op"] for row in result["ops"])):
        rows = [row for row in result["ops"] if row["op"] == op]
        for offset, row in enumerate(rows):
            position = index * 5 + offset
            ops_axis.bar(position, row["speedup"], color=f"C{offset}")
            ops_axis.text(position, row["speedup"], row["impl"], rotation=90, ha="center",
                          va="bottom", fontsize=7)
        names.append(op)
        centers.append(index * 5 + (len(rows) - 1) / 2)
    ops_axis.set_xticks(centers, names)
    ops_axis.set_ylim(0, 1.3 * max(row["speedup"] for row in result["ops"]))
    ops_axis.set_ylabel("speedup over the per-tensor / eager version")
    ops_axis.axhline(1.0, color="gray", linewidth=0.5)

    labels = [f"{s['kernels']}{', compiled' if s['compile'] else ''}" for s in result["steps"]]
    step_axis.bar(labels, [s["images_per_s"] for s in result["steps"]],
                  color=[f"C{i}" for i in range(len(labels))])
    step_axis.set_ylabel("images/s (two views each)")
    settings = result["settings"]
    step_axis.set_title(f"{settings['arch']}, {settings['image_size']} px, batch "
                        f"{settings['batch_size']}, {settings['precision']}", fontsize=9)
    figure.suptitle(f"byolctl profile on {result['environment']['device']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
