"""Whether a warning points at the caller's line (its stacklevel is right), also under mutation testing.

The mutation tool runs every function of a mutated module through a trampoline, one more
stack frame, so there a right stacklevel lands in the trampoline instead of the test. What a
wrong stacklevel gives is the same in both: a line inside mpruner. Pass the test module's own
``__file__``: the warning must name the test's line, not a helper's.
"""
import os
from pathlib import Path

import mpruner

PACKAGE = Path(mpruner.__file__).resolve().parent


def warned_at_caller(warning, test_file: str) -> bool:
    if "MUTANT_UNDER_TEST" in os.environ:  # set (possibly empty) in every mutation run
        return PACKAGE not in Path(warning.filename).resolve().parents
    return warning.filename == test_file
