"""Regenerates the small .npy arrays the example configs read (python3 + numpy).

Ridge: 30 training and 20 validation rows of 4 features, y = X w + 0.5 noise.
Hyper-cleaning: 3 Gaussian classes in 5 dimensions, 40 train (10 labels corrupted,
flagged in hc_corrupted.npy), 30 validation, 30 test; features stored as float32 to
show that both float widths are read.
"""
import numpy as np

rng = np.random.default_rng(7)
w = rng.normal(size=4) / 2.0
for name, rows in [("train", 30), ("val", 20)]:
    x = rng.normal(size=(rows, 4))
    np.save(f"ridge_x_{name}.npy", x)
    np.save(f"ridge_y_{name}.npy", x @ w + 0.5 * rng.normal(size=rows))
np.save("ridge_lambda0.npy", np.array([-1.0, -0.5, 0.0, 0.5]))

means = 2.0 * rng.normal(size=(3, 5))
for name, rows in [("train", 40), ("val", 30), ("test", 30)]:
    y = np.arange(rows) % 3
    x = means[y] + rng.normal(size=(rows, 5))
    if name == "train":
        bad = np.zeros(rows)
        bad[rng.permutation(rows)[:10]] = 1.0
        y = np.where(bad == 1.0, (y + 1 + rng.integers(0, 2, size=rows)) % 3, y)
        np.save("hc_corrupted.npy", bad)
    np.save(f"hc_x_{name}.npy", x.astype(np.float32))
    np.save(f"hc_y_{name}.npy", y.astype(np.float64))

# A starting point for the inner solver (inner.init): hyper-cleaning's w in its flat
# layout, W [5, 3] row-major and then b [3], 18 values.
np.save("hc_w0.npy", 0.1 * np.sin(np.arange(1.0, 19.0)))
