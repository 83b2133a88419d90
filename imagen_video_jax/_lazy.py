"""Lazy exports for the package `__init__` files.

A package lists its public names and the module defining each; a name's module is
imported only when the name is first used (so `import imagen_video_jax` imports neither
jax's data nor text stacks), then cached in the package's namespace.
"""

import importlib
import sys
from typing import Callable, Iterable, Mapping


def exports(
  package: str, table: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """(`__getattr__`, `__dir__`) for `package`.

  table: public name -> its module: a full dotted path, or a submodule's bare name.
  submodules: bare names of submodules reachable as attributes before being imported.
  """
  submodules = frozenset(submodules)

  def __getattr__(name: str):
    if name in submodules:
      return importlib.import_module(f'{package}.{name}')
    module = table.get(name)
    if module is None:
      raise AttributeError(f'module {package!r} has no attribute {name!r}')
    value = getattr(
      importlib.import_module(module if '.' in module else f'{package}.{module}'), name
    )
    setattr(sys.modules[package], name, value)  # cache: later lookups skip __getattr__
    return value

  def __dir__() -> list[str]:
    # The public API, the dunders and any submodule imported so far; no private helpers.
    names = vars(sys.modules[package])
    return sorted({n for n in names if not n.startswith('_') or n.startswith('__')} | set(table))

  return __getattr__, __dir__
