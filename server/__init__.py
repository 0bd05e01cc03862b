"""Real-time streaming avatar server: live audio in, lip-synced avatar video out.

Sessions already run in parallel (worker processes and per-session threads), so BLAS/OpenMP
pools inside numpy and OpenCV only oversubscribe the cores: they are limited to one thread
here, before numpy is imported (an explicit setting in the environment wins).
"""

import os as _os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
