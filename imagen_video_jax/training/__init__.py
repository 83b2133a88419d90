"""Training jobs: train state, the jitted step, orbax checkpoints and the resumable loop.

Names resolve lazily, as in the top-level package: importing one module of this package
(`training.checkpointing`, say) does not import the others.
"""

from imagen_video_jax import _lazy

_EXPORTS = {
  'CheckpointError': 'checkpointing',
  'Checkpointer': 'checkpointing',
  'ConfigMismatchError': 'checkpointing',
  'NonFiniteCheckpointError': 'checkpointing',
  'config_differences': 'checkpointing',
  'ConfigError': 'loop',
  'DataError': 'loop',
  'NonFiniteError': 'loop',
  'TrainResult': 'loop',
  'train_and_evaluate': 'loop',
  'TrainState': 'state',
  'make_optimizer': 'state',
}
__all__ = sorted(_EXPORTS)
_MODULES = ('checkpointing', 'loop', 'metrics', 'state', 'step', 'warm_start')


__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS, submodules=_MODULES)
