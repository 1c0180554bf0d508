"""``user_stacklevel()``: the ``stacklevel`` that points a warning at the first line outside mpruner.

A warning raised deep inside (``analyze`` -> accumulator -> ``hsic_to_cka``) should name the
user's call, whichever public function led there. Counting frames by hand breaks whenever a
call path gains or loses a level; walking the stack to the first frame outside the package
does not (pandas' ``find_stack_level`` does the same).
"""
import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """For ``warnings.warn(..., stacklevel=user_stacklevel())``, called in the function that warns."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
