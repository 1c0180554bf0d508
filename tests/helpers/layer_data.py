"""Shared test data: layers with common structure and a large feature offset.

A module of its own (not conftest.py) so that test files import it by a name no other
directory's conftest shadows (``make bench`` collects benchmarks/ and tests/bench/ in one run).
"""
import torch

# Seeds for the exactness tests: a tolerance that holds for one seed only is luck.
SEEDS = (1234, 7, 20261201)

# A common offset of 100 on every feature: a float32 Gram of the uncentred samples
# then loses ~1e-3 of CKA (far outside the float32 tolerance of the tests), so a
# missing feature centering fails them; see tests/engine/test_cka.py::test_uncentred_float32_gram_fails_the_tolerance.
OFFSET = 100.0


def structured_layers(gen, n=40, dims=(12, 8, 20, 16), dtype=torch.float64, offset=OFFSET):
    """Layers that share structure (so CKA values are spread between 0 and 1), with a
    common offset that makes uncentred float32 Grams inaccurate."""
    base = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    out = []
    for i, d in enumerate(dims):
        w = torch.randn(6, d, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, d, generator=gen, dtype=torch.float64) * (0.3 + 0.4 * i)
        out.append((torch.tanh(base @ w) + noise + offset).to(dtype))
    return out
