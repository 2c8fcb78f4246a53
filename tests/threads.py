"""Test helper: run a block with one torch thread."""

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Run the block with one intra-op torch thread, restoring the previous count after.

    MKL's float64 eigh (the spectra behind every rank rule) with two spinning OpenMP threads runs 10-50x
    slower than with one on a loaded 2-core machine; compression quality is irrelevant to the tests using it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
