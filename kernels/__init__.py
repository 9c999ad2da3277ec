"""Our Triton kernels, one module per kernel: fused_add_dropout_norm, softmax, flash_attention.

Import a module to use it (``from roofline.kernels.softmax import softmax``); this package imports
nothing itself, so ``import roofline.kernels`` works where Triton is not installed.
"""
