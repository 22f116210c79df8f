"""How close each fused kernel's result must come to its plain-torch reference, per dtype.

The kernel tests (tests/test_*_kernel.py) and the benchmarks' checks before timing
(benchmarks/checks.py) both compare with these, so a benchmark never times an implementation
that the tests would reject. Pass one entry to `torch.testing.assert_close` as keywords:
`assert_close(actual, expected, **TOLERANCES["ema"][torch.bfloat16])`.
"""

import torch

# fp32: EMA is one multiply-add per element, so it stays within a few units in the last place
# (1.2e-7 relative each); LARS (per-tensor norms) and the loss (row sums) reduce in another
# order than torch does, hence 1e-5. bf16 keeps 8 significant bits, so rounding a result to
# bf16 alone moves it by up to 0.4%: EMA rounds once, hence 1e-2; LARS and the loss add their
# reduction-order differences before rounding, hence 2e-2. These are the values the kernel
# tests have used since each kernel landed.
TOLERANCES: dict[str, dict[torch.dtype, dict[str, float]]] = {
    "ema": {torch.float32: {"atol": 1e-6, "rtol": 1e-6},
            torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2}},
    "lars": {torch.float32: {"atol": 1e-5, "rtol": 1e-5},
             torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}},
    "loss": {torch.float32: {"atol": 1e-5, "rtol": 1e-5},
             torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}},
}
