"""One map's topography figures and their means over sheets, in the form every probe reports."""
from __future__ import annotations

import numpy as np

from .stats import morans_i_tests

__all__ = ["map_test", "map_tests", "summarise", "MAP_KEYS"]

MAP_KEYS = ("morans_i", "morans_i_null", "p_value", "morans_i_smoothed", "morans_i_smoothed_null", "p_value_smoothed")


def map_test(values, layout, fwhm: float | None = 2.0, permutations: int = 999, seed: int = 0) -> dict:
    """Moran's I of a map next to its shuffled-position null (mean, sd, permutation p), and — with ``fwhm`` —
    the same after Gaussian smoothing, where the null is smoothed too (smoothing alone raises Moran's I)."""
    return map_tests([values], layout, fwhm, permutations, seed)[0]


def map_tests(maps, layout, fwhm: float | None = 2.0, permutations: int = 999, seed: int = 0) -> list[dict]:
    """:func:`map_test` of several maps on one sheet, with one set of shuffles (each result equal to its own
    :func:`map_test`)."""
    fwhms = (None, fwhm) if fwhm else (None,)
    tests = morans_i_tests(maps, layout, permutations, seed, fwhms)
    outs = []
    for k in range(len(tests[0])):
        raw = tests[0][k]
        out = {"morans_i": raw["i"], "morans_i_null": raw["null_mean"], "morans_i_null_sd": raw["null_sd"],
               "p_value": raw["p_value"], "permutations": raw["permutations"], "_null": raw["null"],
               "morans_i_smoothed": None, "morans_i_smoothed_null": None, "p_value_smoothed": None, "fwhm": fwhm or None}
        if fwhm:
            sm = tests[1][k]
            out.update(morans_i_smoothed=sm["i"], morans_i_smoothed_null=sm["null_mean"],
                       morans_i_smoothed_null_sd=sm["null_sd"], p_value_smoothed=sm["p_value"], _null_smoothed=sm["null"])
        outs.append(out)
    return outs


def summarise(res: dict) -> dict:
    """Adds to ``res`` the means over ``res["sheets"]`` of every figure; the mean Moran's I gets its own
    permutation p against the mean of the sheets' nulls (permutation k of every sheet averaged). Drops the
    null arrays (JSON-ready)."""
    sheets = list(res["sheets"].values())
    for key in ("morans_i", "morans_i_null", "morans_i_smoothed", "morans_i_smoothed_null", "significant_units"):
        vals = [s[key] for s in sheets if s.get(key) is not None]
        res[key] = float(np.mean(vals)) if vals else None
    for arr, obs, pkey in (("_null", "morans_i", "p_value"), ("_null_smoothed", "morans_i_smoothed", "p_value_smoothed")):
        nulls = [s.pop(arr) for s in sheets if arr in s]
        if nulls and res[obs] is not None and len({len(n) for n in nulls}) == 1:
            mean_null = np.mean(nulls, 0)
            res[pkey] = float((1 + (mean_null >= res[obs] - 1e-12).sum()) / (1 + len(mean_null)))
        else:
            res[pkey] = None
    return res
