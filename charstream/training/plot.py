"""The training history as a picture: the tutorial's `print_model_history`."""
from __future__ import annotations

import io


def history_png(rows: list[dict]) -> bytes:
    """Loss and accuracy by epoch, train and validation, as PNG bytes.

    Args:
        rows: `history.csv`'s rows (`epoch` 0-based, then `loss`, `accuracy`,
            `val_loss`, `val_accuracy` where present).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss (nats/char)"),
                              (axes[1], "accuracy", "accuracy")):
        for key, name in ((metric, "train"), (f"val_{metric}", "validation")):
            if rows and all(key in row for row in rows):
                ax.plot(epochs, [row[key] for row in rows], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("charstream training history")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
