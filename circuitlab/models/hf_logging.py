"""transformers and TransformerLens, kept quiet: circuitlab reports what matters in one line of its own."""

from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def quiet():
    """TransformerLens logs at INFO on the root logger and transformers prints a load report: keep both quiet
    (circuitlab reports what matters in one line of its own)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(verbosity)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
