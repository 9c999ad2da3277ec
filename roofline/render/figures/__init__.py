"""The figures: roofline, time split, sweep, hierarchical (counters) and compare overlay, in one style (../style.py)."""
