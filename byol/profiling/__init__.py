"""Where the time goes: the hot operations in each implementation, whole training steps and
the data pipeline, timed side by side (`byolctl profile`, and the scripts in benchmarks/)."""
