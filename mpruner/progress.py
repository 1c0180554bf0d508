"""Progress output of other libraries: ``--no-progress`` silences their bars too."""


def no_library_bars() -> None:
    """Turns off the bars transformers draws (weight loading, saving); a no-op without it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
