"""Whether a warning points at the caller's line (its stacklevel is right), also under mutmut.

mutmut runs every function of a mutated module through a trampoline, one more stack frame,
so there a right stacklevel lands in mutmut's trampoline instead of the test. What a wrong
stacklevel gives is the same in both: a line inside mpruner.
"""
import os
from pathlib import Path

import mpruner

PACKAGE = Path(mpruner.__file__).resolve().parent


def warned_at_caller(warning, test_file: str) -> bool:
    if "MUTANT_UNDER_TEST" in os.environ:  # set (possibly empty) in every mutmut run
        return PACKAGE not in Path(warning.filename).resolve().parents
    return warning.filename == test_file
