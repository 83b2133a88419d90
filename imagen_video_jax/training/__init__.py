"""Training jobs: train state, the jitted step, orbax checkpoints and the resumable loop.

Names resolve lazily, as in the top-level package: importing one module of this package
(`training.checkpointing`, say) does not import the others.
"""

import importlib as _importlib

_EXPORTS = {
  'Checkpointer': 'checkpointing',
  'ConfigMismatchError': 'checkpointing',
  'NonFiniteCheckpointError': 'checkpointing',
  'config_differences': 'checkpointing',
  'ConfigError': 'loop',
  'NonFiniteError': 'loop',
  'TrainResult': 'loop',
  'train_and_evaluate': 'loop',
  'TrainState': 'state',
  'make_optimizer': 'state',
}
__all__ = sorted(_EXPORTS)
_MODULES = ('checkpointing', 'loop', 'metrics', 'state', 'step', 'warm_start')


def __getattr__(name: str):
  if name in _MODULES:  # `training.loop` without importing it first, as before
    return _importlib.import_module(f'{__name__}.{name}')
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(_importlib.import_module(f'{__name__}.{module}'), name)
  globals()[name] = value  # cache: later lookups skip __getattr__
  return value


def __dir__():
  # The public API, the dunders and any submodule imported so far; no private helpers.
  return sorted(
    {n for n in globals() if not n.startswith('_') or n.startswith('__')} | set(_EXPORTS)
  )
