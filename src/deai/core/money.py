"""Money is an integer number of micro-units (1 DEAI = 1_000_000 µ). Never a float."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

MICRO = 1_000_000


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost_for_units(units: int, price_per_1000: int) -> int:
    """What ``units`` cost at a price per 1,000 units, rounded up to a micro-unit."""
    if units < 0 or price_per_1000 < 0:
        raise ValueError("units and price must be non-negative")
    return ceil_div(units * price_per_1000, 1000)


Amount = TypeVar("Amount", int, "np.ndarray")


def fee_of(amount: Amount, fee_bps: int) -> Amount:
    """The network's cut, in basis points, rounded down so the provider never loses a unit.

    The one fee rule: the coordinator's settlement port and the simulator (over arrays
    of task values) both call it.
    """
    return amount * fee_bps // 10_000


def fmt(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def parse(text: str) -> int:
    """Parse '1.5' or '1500000µ' into micro-units exactly (no float on the way)."""
    s = text.strip()
    if s.endswith("µ") or s.endswith("u"):
        return int(s[:-1])
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    whole, _, frac = s.partition(".")
    if (not (whole.isdigit() or (whole == "" and frac)) or (frac and not frac.isdigit())
            or len(frac) > 6):
        raise ValueError(f"not an amount: {text!r}")
    value = int(whole or "0") * MICRO + int((frac or "0").ljust(6, "0"))
    return -value if neg else value
