"""Uses a pinned third-party package, installed in a cached virtualenv built by uv."""

import tabulate

rows = [("alpha", 1), ("beta", 2)]
print(tabulate.tabulate(rows, headers=["name", "score"]))
print(f"tabulate {tabulate.__version__}")
