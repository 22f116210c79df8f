"""byolctl's compute kernels: Triton implementations and their plain-torch references.

Imports torch (and, for the fused kernels, triton) only; nothing here knows about BYOL beyond
its math. `reference` holds the plain-torch versions used for `--kernels eager`, on the CPU,
and as the ground truth in tests and benchmarks.
"""

# PyPI has an unrelated package that is also imported as `kernels`; byol checks this marker so
# that a user who has both gets a clear error instead of the wrong module.
IS_BYOLCTL_KERNELS = True
