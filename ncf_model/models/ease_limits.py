"""EASE^R's limits, checked before any fit: the memory estimate (`estimate_ease_bytes`,
`check_ease_memory`), the time estimate from a Cholesky timed on the device
(`probe_seconds`, `check_ease_time`), and which side of the system a fit solves
(`uses_dual`). `ncf_model.models.ease` fits; the candidates stage asks these first and
skips the family with the reason when a limit is exceeded. No I/O here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# Peak memory of `fit_ease` in n_items² matrices of the fit's dtype. G and its Cholesky
# factor L coexist (G is freed once L exists), then L and P = G⁻¹ do, and cholesky_inverse
# needs a third matrix of workspace (on CUDA, the identity it solves against): 3, which is
# what the CPU peak RSS measured at n_items=4,000 (3.00 x n²x4 bytes). B is computed in
# place in P, so it adds nothing; XᵀX's column blocks (ease._BLOCK_ELEMENTS) are small beside.
# The users' side holds one n_items² matrix, n_users x n_items (KX) and this many n_users².
EASE_PEAK_MATRICES = 3


class EaseMemoryError(RuntimeError):
    """The EASE fit for this many items would exceed the configured memory limit."""


def uses_dual(n_users: int | None, n_items: int) -> bool:
    """Whether `fit_ease` solves on the users' side: fewer users than items."""
    return n_users is not None and n_users < n_items


def estimate_ease_bytes(n_items: int, dtype_bytes: int = 4, *,
                        n_users: int | None = None) -> int:
    """Peak bytes of `fit_ease` on `n_items` items: EASE_PEAK_MATRICES x n_items² x dtype;
    with fewer users than items (the dual solve), n_items² + n_users x n_items (KX) +
    EASE_PEAK_MATRICES x n_users² (the users' system) of dtype."""
    if uses_dual(n_users, n_items):
        assert n_users is not None
        return (n_items * n_items + n_users * n_items
                + EASE_PEAK_MATRICES * n_users * n_users) * dtype_bytes
    return EASE_PEAK_MATRICES * n_items * n_items * dtype_bytes


def check_ease_memory(n_items: int, limit_bytes: int, *, dtype_bytes: int = 4,
                      n_users: int | None = None,
                      limit_key: str = "the EASE memory limit") -> int:
    """The estimate of `estimate_ease_bytes`, or EaseMemoryError when it exceeds `limit_bytes`.

    `limit_key` names the setting the caller reads the limit from, for the message.
    """
    estimate = estimate_ease_bytes(n_items, dtype_bytes, n_users=n_users)
    if estimate > limit_bytes:
        shape = (f"n_items² + n_users x n_items + {EASE_PEAK_MATRICES} x n_users²"
                 if uses_dual(n_users, n_items)
                 else f"{EASE_PEAK_MATRICES} x n_items²")
        raise EaseMemoryError(
            f"EASE on n_items={n_items:,} needs ~{estimate / 1e9:.1f} GB "
            f"({shape} x {dtype_bytes} bytes), over the limit of "
            f"{limit_bytes / 1e9:.1f} GB; raise {limit_key} or drop the ease family")
    return estimate


# The compute estimate's probe: one Cholesky + inverse of a PROBE_ITEMS² SPD matrix on the
# device, scaled by (order / PROBE_ITEMS)³, order the size of the system solved (both are
# O(n³)); the best of PROBE_REPEATS.
PROBE_ITEMS = 2048
PROBE_REPEATS = 2


class EaseTimeError(RuntimeError):
    """The EASE fits for this many items would take longer than the configured budget."""


def probe_seconds(device: torch.device | str, n_items: int = PROBE_ITEMS) -> float:
    """Seconds of one float32 Cholesky + cholesky_inverse of an `n_items`² SPD matrix on
    `device` (seeded; the best of PROBE_REPEATS), the O(n³) core of `fit_ease`."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_items, n_items, generator=g).to(device)
    gram = x @ x.T / n_items + torch.eye(n_items, device=device)
    best = math.inf
    for _ in range(PROBE_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        factor, _ = torch.linalg.cholesky_ex(gram)
        torch.cholesky_inverse(factor)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def check_ease_time(n_items: int, fits: int, limit_seconds: float, *,
                    device: torch.device | str, n_users: int | None = None,
                    limit_key: str = "the EASE time limit",
                    probe: Callable[[torch.device | str, int], float] = probe_seconds) -> float:
    """Estimated seconds of `fits` EASE fits on `n_items` items on `device`, or
    EaseTimeError when over `limit_seconds`. The estimate times a PROBE_ITEMS-item
    Cholesky + inverse here and scales it by n³, n the order of the system solved:
    n_items, or n_users when there are fewer (the dual solve). It leaves out forming XᵀX
    and scoring (at 13,372 items on 2 CPU cores: 25 s estimated per fit, 26-35 s measured).
    Below PROBE_ITEMS it returns 0 without probing: such fits take seconds."""
    order = min(n_items, n_users or n_items)  # the dual solve's order is n_users
    if order <= PROBE_ITEMS:
        return 0.0
    probed = probe(device, PROBE_ITEMS)
    estimate = fits * probed * (order / PROBE_ITEMS) ** 3
    log.info("EASE estimate: %d fits x %.0f s on %s for n_items=%d, order %d (a %d-item "
             "Cholesky + inverse took %.3f s)", fits, estimate / fits,
             torch.device(device).type, n_items, order, PROBE_ITEMS, probed)
    if estimate > limit_seconds:
        raise EaseTimeError(
            f"EASE on n_items={n_items:,} (a system of order {order:,}) needs "
            f"~{estimate / 60:.0f} min on {torch.device(device).type} ({fits} fits; a "
            f"{PROBE_ITEMS:,}-item Cholesky + inverse took {probed:.3f} s, scaled by n³), "
            f"over the limit of {limit_seconds / 60:g} min; raise {limit_key}, narrow "
            "ease.l2_grid or fit on a GPU")
    return estimate
