"""Lazy package exports (PEP 562): a public name is imported on its first use.

``import gsi`` then costs nothing beyond the package itself, so the sans-IO core
(``gsi.protocol``) loads without trio, and nothing POSIX-only is touched until a
name that needs it is used. A package's ``__init__`` lists its exports once, as
``{name: ".module"}``, and repeats the imports under ``if TYPE_CHECKING:`` for type
checkers and IDEs (a test checks that the two agree).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module (relative to ``package``) that defines it.
    """

    def __getattr__(name: str) -> object:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
