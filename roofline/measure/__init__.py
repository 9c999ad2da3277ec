"""Measuring: the device and its roofs, the timer, one (op, variant) at a time, the run pipeline (session.py), and
the ways of measuring built on it — train mode, tensor/data-parallel ranks, ncu counters, sweeps.

Nothing here renders (tests/test_layers.py): results go out through results.py and a Listener.
"""
