# The C extension built from _loops.c (see kernels.py for what each loop computes).
import numpy as np

def long_bands(mask: np.ndarray, length: int, reach: int, thickest: int, out: np.ndarray, /) -> int: ...
def strip(
    intercept: float,
    slope: float,
    thickness: float,
    start: int,
    end: int,
    height: int,
    first: np.ndarray,
    last: np.ndarray,
    /,
) -> None: ...
def line_pixels(mask: np.ndarray, line: np.ndarray, extent: int, out: np.ndarray, /) -> None: ...
def stretch_levels(rounded: np.ndarray, /) -> tuple[int, int]: ...
