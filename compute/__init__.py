"""CLIP Attention Lab: the offline compute stage (``python -m compute``).

Every entry point (the command line, the benches, the tests, the dashboard) imports this package before
torch, so this is where OpenMP learns how to wait: torch's CPU threads sleep between parallel regions
instead of spinning. On a machine shared with other jobs (or with this run's own decode workers) spinning
threads burn the cores the others need, and the engine ran 5x slower than on a quiet machine; with passive
waiting it keeps about half its quiet rate (``make bench``'s busy section). A value set by the user wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
