"""Where the time goes: the hot operations in each implementation, whole training steps and
the data pipeline, timed side by side (`byolctl profile`, and the scripts in benchmarks/).

Mechanisms only: the performance targets and their verdicts live in benchmarks/targets.py, and
the checks of each implementation against the reference in the kernel tests and
benchmarks/checks.py.
"""
