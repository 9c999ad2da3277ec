"""Rendering: terminal tables, figures, the HTML report and markdown, from saved Results and analysis only.

Nothing here measures or imports torch (tests/test_layers.py): it renders committed results anywhere.
"""
