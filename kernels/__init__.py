"""Our Triton kernels, one module per kernel (fused_add_dropout_norm and its backward, softmax, flash_attention,
flash_decoding) over shared helpers (common.py: the interpreter flag, dot, the device check; dropout_philox.py).

Import a module to use it (``from roofline.kernels.softmax import softmax``); this package imports
nothing itself, so ``import roofline.kernels`` works where Triton is not installed.
"""
