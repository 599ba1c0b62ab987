"""Benchmarks: each one measures our code side by side with its reference in one run and prints the figures.

``python -m bench.staging``   image staging: ours vs one shell pipeline (the limit) vs download-then-dd (KubeOS)
``python -m bench.rollout``   rollout overhead on the Temporal dev server vs the same activities run bare (floor)
``python -m bench.makespan``  sliding window vs batch barrier vs the lower bound, on skewed node durations

``make bench`` runs all three with their default sizes; docs/benchmarks.md holds the results and how to read them.
Every script takes smaller sizes as flags, which is how tests/bench runs them in seconds.
"""
