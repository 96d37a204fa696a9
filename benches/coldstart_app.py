"""The cold-start benchmark's sandbox workload (benches/coldstart.py), run by the host's
Debian python3 with its numpy, scipy and pandas (mounted read-only into the sandbox).

    python3 coldstart_app.py ROWS INTERVAL_MS

Prints "START", imports the stack, builds some state (a ROWS-row pandas frame, a group-by,
a sparse matrix, a solved linear system, a fitted distribution), prints "READY <seconds>",
then answers one request every INTERVAL_MS: "answer <n> <value>", a value computed from that
state. A restored copy continues the numbering; the harness times a start (or a restore) to
the first answer line.
"""
import sys
import time

t0 = time.monotonic()
print("START", flush=True)
rows, interval = int(sys.argv[1]), int(sys.argv[2]) / 1000.0

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.signal  # noqa: E402
import scipy.sparse  # noqa: E402
import scipy.stats  # noqa: E402

rng = np.random.default_rng(42)
df = pd.DataFrame({
    "key": rng.integers(0, 1000, rows),
    "x": rng.standard_normal(rows),
    "cat": pd.Categorical(rng.choice(["a", "b", "c", "d"], rows)),
    "when": pd.date_range("2026-01-01", periods=rows, freq="s"),
})
by_key = df.groupby("key")["x"].agg(["mean", "std", "count"])
by_cat = df.groupby("cat", observed=True)["x"].mean()
sp = scipy.sparse.random(2000, 2000, density=0.01, random_state=1, format="csr")
a = rng.standard_normal((300, 300)) + 300 * np.eye(300)
sol = scipy.linalg.solve(a, np.ones(300))
loc, scale = scipy.stats.norm.fit(df["x"].to_numpy()[:10000])
print(f"READY {time.monotonic() - t0:.2f}", flush=True)

n = 0
while True:
    k = n % 1000
    v = (by_key["mean"].get(k, 0.0) + by_cat.iloc[n % len(by_cat)] + sol[n % 300]
         + sp[n % 2000].sum() + loc)
    print(f"answer {n} {v:.6f}", flush=True)
    n += 1
    time.sleep(interval)
