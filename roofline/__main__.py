"""`python -m roofline`: the command line. Run from a checkout, the checkout's folder is sys.path[0]; it is dropped
(roofline itself is imported already) so that the checkout's kernels/ folder, installed as roofline.kernels, never
shadows the PyPI package `kernels` that other libraries import (transformers does)."""

import os
import sys

checkout = os.path.abspath(sys.path[0] or ".") if sys.path else ""
if checkout and all(os.path.isfile(os.path.join(checkout, *p)) for p in (("roofline", "__main__.py"),
                                                                         ("kernels", "__init__.py"))):
    del sys.path[0]

from roofline.cli import main  # noqa: E402

sys.exit(main())
