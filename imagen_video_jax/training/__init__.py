"""Training jobs: train state, the jitted step, orbax checkpoints and the resumable loop."""
from imagen_video_jax.training.checkpointing import (Checkpointer, ConfigMismatchError,
                                                     NonFiniteCheckpointError,
                                                     config_differences)
from imagen_video_jax.training.loop import (ConfigError, NonFiniteError, TrainResult,
                                            train_and_evaluate)
from imagen_video_jax.training.state import TrainState, make_optimizer

__all__ = ['Checkpointer', 'ConfigError', 'ConfigMismatchError', 'NonFiniteCheckpointError',
           'NonFiniteError', 'TrainResult', 'TrainState', 'config_differences',
           'make_optimizer', 'train_and_evaluate']
