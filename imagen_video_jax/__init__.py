"""imagen_video_jax: the Imagen Video text-to-video cascade in JAX/Flax.

The public API lives here; nothing else is needed from private paths:

    import imagen_video_jax as ivj
    cfg = ivj.UNetConfig(levels=(ivj.LevelConfig(64, temporal='attention'), ...))
    model = ivj.VideoUNet(cfg)

Names are resolved lazily, so `import imagen_video_jax` stays cheap and does not
import the data or text stacks until they are used.
"""

import typing as _typing

from imagen_video_jax import _lazy, _xla_cpu

_xla_cpu.apply()  # before JAX starts a backend: convolutions outside YNNPACK (see _xla_cpu)

__version__ = '0.1.0'

# public name -> module that defines it
_EXPORTS = {
  # models
  'VideoUNet': 'imagen_video_jax.models.unet',
  'UNetConfig': 'imagen_video_jax.models.unet',
  'LevelConfig': 'imagen_video_jax.models.unet',
  'init_params': 'imagen_video_jax.models.unet',
  'count_params': 'imagen_video_jax.models.unet',
  'T5Config': 'imagen_video_jax.models.t5',
  'T5Encoder': 'imagen_video_jax.models.t5',
  # diffusion
  'CosineSchedule': 'imagen_video_jax.diffusion.schedules',
  'alpha_sigma': 'imagen_video_jax.diffusion.schedules',
  'DiffusionConfig': 'imagen_video_jax.diffusion.objectives',
  'diffusion_loss': 'imagen_video_jax.diffusion.objectives',
  'drop_text': 'imagen_video_jax.diffusion.objectives',
  'noise_augment': 'imagen_video_jax.diffusion.objectives',
  'SamplerConfig': 'imagen_video_jax.diffusion.samplers',
  'sample': 'imagen_video_jax.diffusion.samplers',
  'guided_denoiser': 'imagen_video_jax.diffusion.samplers',
  # text
  'Tokenizer': 'imagen_video_jax.text.tokenizer',
  'train_sentencepiece': 'imagen_video_jax.text.tokenizer',
  'CheckpointError': 'imagen_video_jax.text.checkpoints',
  'load_source': 'imagen_video_jax.text.checkpoints',
  'load_t5': 'imagen_video_jax.text.checkpoints',
  'save_t5': 'imagen_video_jax.text.checkpoints',
  'TextEncoder': 'imagen_video_jax.text.encoder',
  'CacheReader': 'imagen_video_jax.text.cache',
  'CacheWriter': 'imagen_video_jax.text.cache',
  # data
  'DigitsConfig': 'imagen_video_jax.data.digits',
  'caption_for': 'imagen_video_jax.data.digits',
  'parse_caption': 'imagen_video_jax.data.digits',
  'Example': 'imagen_video_jax.data.records',
  'ImportConfig': 'imagen_video_jax.data.importer',
  'import_videos': 'imagen_video_jax.data.importer',
  'PipelineConfig': 'imagen_video_jax.data.pipeline',
  'DIGITS_STAGES': 'imagen_video_jax.data.pipeline',
  'make_pipeline': 'imagen_video_jax.data.pipeline',
  # scale-out
  'make_mesh': 'imagen_video_jax.parallel',
  'make_hybrid_mesh': 'imagen_video_jax.parallel',
  'mesh_from_config': 'imagen_video_jax.parallel',
  'abstract_mesh': 'imagen_video_jax.parallel',
  'DEFAULT_RULES': 'imagen_video_jax.parallel',
  'logical_shardings': 'imagen_video_jax.parallel',
  'sharded_init': 'imagen_video_jax.parallel',
  'batch_sharding': 'imagen_video_jax.parallel',
  'replicated': 'imagen_video_jax.parallel',
  'mesh_context': 'imagen_video_jax.parallel',
  'initialize_distributed': 'imagen_video_jax.parallel',
  'param_bytes_per_device': 'imagen_video_jax.parallel',
  # cascade
  'CascadePipeline': 'imagen_video_jax.cascade',
  'Stage': 'imagen_video_jax.stage',
  'StageSpec': 'imagen_video_jax.stage',
  'sample_stage': 'imagen_video_jax.sampling',
  'load_cascade': 'imagen_video_jax.export',
  'save_cascade': 'imagen_video_jax.export',
  'pretrained': 'imagen_video_jax.pretrained_loader',
  'pretrained_dir': 'imagen_video_jax.shipped',
  # training
  'train_and_evaluate': 'imagen_video_jax.training.loop',
  'TrainResult': 'imagen_video_jax.training.loop',
  'TrainState': 'imagen_video_jax.training.state',
  'Checkpointer': 'imagen_video_jax.training.checkpointing',
  'ConfigMismatchError': 'imagen_video_jax.training.checkpointing',
  # evaluation
  'Judge': 'imagen_video_jax.evaluation.judge',
  'JudgeConfig': 'imagen_video_jax.evaluation.judge',
  'load_judge': 'imagen_video_jax.evaluation.judge',
  'train_judge': 'imagen_video_jax.evaluation.judge',
  'frechet_distance': 'imagen_video_jax.evaluation.metrics',
  'frechet_video_distance': 'imagen_video_jax.evaluation.fvd',
  # planning
  'MemoryPlan': 'imagen_video_jax.planning',
  'plan_memory': 'imagen_video_jax.planning',
  'smallest_fitting': 'imagen_video_jax.planning',
  'search': 'imagen_video_jax.planning',
  'plan_sampling': 'imagen_video_jax.planning',
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)


if _typing.TYPE_CHECKING:  # static analysers and IDEs see the real names
  from imagen_video_jax.cascade import CascadePipeline
  from imagen_video_jax.evaluation.fvd import frechet_video_distance
  from imagen_video_jax.evaluation.judge import Judge, JudgeConfig, load_judge, train_judge
  from imagen_video_jax.evaluation.metrics import frechet_distance
  from imagen_video_jax.export import load_cascade, save_cascade
  from imagen_video_jax.planning import (
    MemoryPlan,
    plan_memory,
    plan_sampling,
    search,
    smallest_fitting,
  )
  from imagen_video_jax.sampling import sample_stage
  from imagen_video_jax.pretrained_loader import pretrained
  from imagen_video_jax.shipped import pretrained_dir
  from imagen_video_jax.stage import Stage, StageSpec
  from imagen_video_jax.parallel import (
    DEFAULT_RULES,
    abstract_mesh,
    batch_sharding,
    initialize_distributed,
    logical_shardings,
    make_hybrid_mesh,
    make_mesh,
    mesh_context,
    mesh_from_config,
    param_bytes_per_device,
    replicated,
    sharded_init,
  )
  from imagen_video_jax.data.digits import DigitsConfig, caption_for, parse_caption
  from imagen_video_jax.data.importer import ImportConfig, import_videos
  from imagen_video_jax.data.pipeline import DIGITS_STAGES, PipelineConfig, make_pipeline
  from imagen_video_jax.data.records import Example
  from imagen_video_jax.diffusion.objectives import (
    DiffusionConfig,
    diffusion_loss,
    drop_text,
    noise_augment,
  )
  from imagen_video_jax.diffusion.samplers import SamplerConfig, guided_denoiser, sample
  from imagen_video_jax.diffusion.schedules import CosineSchedule, alpha_sigma
  from imagen_video_jax.models.t5 import T5Config, T5Encoder
  from imagen_video_jax.models.unet import (
    LevelConfig,
    UNetConfig,
    VideoUNet,
    count_params,
    init_params,
  )
  from imagen_video_jax.text.cache import CacheReader, CacheWriter
  from imagen_video_jax.text.checkpoints import CheckpointError, load_source, load_t5, save_t5
  from imagen_video_jax.text.encoder import TextEncoder
  from imagen_video_jax.text.tokenizer import Tokenizer, train_sentencepiece
  from imagen_video_jax.training.checkpointing import Checkpointer, ConfigMismatchError
  from imagen_video_jax.training.loop import TrainResult, train_and_evaluate
  from imagen_video_jax.training.state import TrainState
