"""The one part of the package that is compiled: the scan path's pixel loops (see
pipeline/preprocess/_loops.c). Everything else is configured in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pipeline.preprocess._loops",
            ["pipeline/preprocess/_loops.c"],
            # float64 sums and products exactly as written: no fused multiply-adds, whatever the
            # compiler's default, so a line's fit is the same on every machine (-O3 vectorises the
            # blur's integer passes, and reorders no float arithmetic without -ffast-math).
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
