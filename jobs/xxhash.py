"""Spark's `xxhash64`, vectorised in numpy: the same 64-bit values as `F.xxhash64`.

Spark hashes its arguments left to right, each hash the seed of the next (the first
seeded with 42): an int column as XXH64 of its 4 bytes, a bigint as XXH64 of its 8
bytes. `chain` does the same over numpy arrays (int32 -> 4 bytes, int64 -> 8 bytes), so
code running in numpy (jobs.prepare_fast) draws exactly the items that the Spark expressions of
jobs.negatives and jobs.split draw. Tested value for value against Spark.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SPARK_SEED = 42  # org.apache.spark.sql.catalyst.expressions.XxHash64's seed

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


def _rotl(x: np.ndarray, bits: int) -> np.ndarray:
    return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def hash_int(values: npt.ArrayLike, seed: npt.ArrayLike) -> np.ndarray:
    """XXH64 of each int32 of `values` (4 bytes) with the uint64 `seed` (array or 0-d)."""
    h = np.asarray(seed, dtype=np.uint64) + _P5 + np.uint64(4)
    h = h ^ (np.asarray(values, dtype=np.int32).astype(np.uint32).astype(np.uint64) * _P1)
    return _fmix(_rotl(h, 23) * _P2 + _P3)


def hash_long(values: npt.ArrayLike, seed: npt.ArrayLike) -> np.ndarray:
    """XXH64 of each int64 of `values` (8 bytes) with the uint64 `seed` (array or 0-d)."""
    h = np.asarray(seed, dtype=np.uint64) + _P5 + np.uint64(8)
    h = h ^ (_rotl(np.asarray(values, dtype=np.int64).view(np.uint64) * _P2, 31) * _P1)
    return _fmix(_rotl(h, 27) * _P1 + _P4)


def chain(*columns: npt.ArrayLike) -> np.ndarray:
    """F.xxhash64(*columns) as int64: int32 arrays hash as Spark ints, int64 as bigints.

    Arrays broadcast against each other (a scalar seed, a per-user prefix, per-row
    values), as numpy's operators do.
    """
    return resume(np.asarray(SPARK_SEED, dtype=np.int64), *columns)


def resume(prefix: npt.ArrayLike, *columns: npt.ArrayLike) -> np.ndarray:
    """F.xxhash64(*first, *columns) given prefix = chain(*first): hash further columns."""
    h = np.asarray(prefix, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        for values in map(np.asarray, columns):
            if values.dtype == np.int32:
                h = hash_int(values, h)
            elif values.dtype == np.int64:
                h = hash_long(values, h)
            else:
                raise TypeError(f"xxhash64 of {values.dtype}: only int32 and int64 hash")
    return np.asarray(h, dtype=np.uint64).view(np.int64)
