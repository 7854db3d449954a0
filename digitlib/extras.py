"""Optional dependencies: a clear line, not a traceback, when an extra is not installed.

The core install (``pip install digitlib``) trains, evaluates and predicts. The notebooks, the app,
explanations and ONNX export are extras (pyproject.toml lists them); code that needs one asks for
its module here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DigitlibError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a DigitlibError that names the extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DigitlibError(
            f"{purpose} needs {module.split('.')[0]}, which comes with digitlib's {extra!r} extra: "
            f"pip install 'digitlib[{extra}]' (in a checkout: pip install -e '.[{extra}]')"
        ) from None
