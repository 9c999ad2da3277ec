"""Pure functions over Results: placement, fusion, the block split, sweeps, scaling, compare statistics, counters.

Nothing here measures, renders or imports torch: it runs on committed results anywhere (tests/test_layers.py).
"""
