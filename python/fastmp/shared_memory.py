"""fastmp.shared_memory: for now the stdlib's :mod:`multiprocessing.shared_memory`, re-exported.

A later fastmp release replaces what it speeds up; the names stay the same.
"""

import multiprocessing.shared_memory as _std

globals().update({k: v for k, v in vars(_std).items() if not k.startswith("__")})
__all__ = list(getattr(_std, "__all__", [k for k in vars(_std) if not k.startswith("_")]))
