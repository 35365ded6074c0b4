"""Sandbox benchmarks (issue 7 §4): `clif bench efficacy` (CLIF against its baselines and ablations on
confusable character pairs) and `clif bench erase` (All-but-One against ESD), both scored by the sandbox
oracle with bootstrap 95% intervals. See docs/benchmarks.md.
"""
