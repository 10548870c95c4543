"""OpenALIGN: an open implementation of ALIGN (Jia et al., ICML 2021).

Library only: no argument parsing and no global mutable state here; entry points live in
``openalign.cli``.
"""

__version__ = "0.1.0"
