"""A cascade stage, described once.

`Stage` is what training, export, planning, sampling and evaluation all mean by a
stage: the clip it makes and how it relates to the stage below (`StageSpec`), its
U-Net, the diffusion it was trained with, the text encoder it reads, the noise level
of its super-resolution conditioning at sampling time, its frame rate and its
default sampler; with its weights once trained.

    stage = stage_lib.from_config(config)          # a training job's ml_collections config
    stage.to_json() / Stage.from_json(d, params)   # stage.json of an exported cascade

`from_config` is the only place a training config becomes typed configs; a saved
config (a plain dict, as checkpoints store it) converts the same way.

This module sits low in the package: it imports only the typed configs of the model,
diffusion and text-encoder modules, so anything above may use it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

from imagen_video_jax.diffusion.objectives import DiffusionConfig
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.diffusion.schedules import CosineSchedule
from imagen_video_jax.models.t5 import T5Config
from imagen_video_jax.models.unet import UNetConfig

KINDS = ('base', 'tsr', 'ssr')
# One sample's output video (float32 RGB) may take at most this much memory: the
# cascade holds several, plus the network's activations, so anything larger is a typo
# (the paper's largest stage, 128 x 768 x 1280, takes 1.4 GiB).
MAX_SAMPLE_BYTES = 8 * 2**30


def _gib(n: float) -> str:
  return f'{n / 2**30:.3g} GiB'


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """The clip one stage makes, and its relation to the stage below.

  Attributes:
    frames, height, width: the stage's output clip.
    frame_stride: take every ``frame_stride``-th source frame (source fps / stage fps).
    kind: ``"base"``, ``"tsr"`` (temporal super-resolution) or ``"ssr"`` (spatial).
    factor: the SR factor: a TSR stage is conditioned on every ``factor``-th of its
      frames, an SSR stage on its frames at ``1 / factor`` of the size.
  """

  frames: int
  height: int
  width: int
  frame_stride: int = 1
  kind: str = 'base'
  factor: int = 1

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'StageSpec.kind must be one of {KINDS}, got {self.kind!r}')
    sizes = (self.frames, self.height, self.width, self.frame_stride, self.factor)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in sizes):
      raise ValueError(f'StageSpec sizes must be integers: {self}')
    if min(sizes) < 1:
      raise ValueError(f'StageSpec sizes must be positive: {self}')
    need = self.frames * self.height * self.width * 3 * 4
    if need > MAX_SAMPLE_BYTES:
      raise ValueError(
        f'a {self.frames}x{self.height}x{self.width} (frames x H x W) stage output needs '
        f'{_gib(need)} per sample for the video alone (float32 RGB); the limit is '
        f'{_gib(MAX_SAMPLE_BYTES)}'
      )
    if self.kind != 'base' and self.factor < 2:
      raise ValueError(f'a {self.kind} stage needs factor >= 2: {self}')
    t, h, w = self.cond_frames, self.cond_height, self.cond_width
    if (t * self.temporal_factor, h * self.spatial_factor, w * self.spatial_factor) != (
      self.frames,
      self.height,
      self.width,
    ):
      raise ValueError(f'factor {self.factor} must divide the {self.kind} output: {self}')

  @property
  def is_sr(self) -> bool:
    return self.kind != 'base'

  @property
  def temporal_factor(self) -> int:
    return self.factor if self.kind == 'tsr' else 1

  @property
  def spatial_factor(self) -> int:
    return self.factor if self.kind == 'ssr' else 1

  @property
  def cond_frames(self) -> int:
    return self.frames // self.temporal_factor

  @property
  def cond_height(self) -> int:
    return self.height // self.spatial_factor

  @property
  def cond_width(self) -> int:
    return self.width // self.spatial_factor

  @property
  def source_span(self) -> int:
    """Source frames one example covers."""
    return (self.frames - 1) * self.frame_stride + 1


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a cascade.

  Attributes:
    name: e.g. 'base', 'tsr', 'ssr'.
    spec: output size and, for SR stages, kind and factor.
    unet: the network's config.
    params: its (EMA) parameters; None for a stage described but not trained.
    fps: frame rate of this stage's output.
    diffusion: schedule and parameterisation it is trained with.
    sampler: default sampler settings (overridable per call).
    sample_cond_t: SR stages: the fixed noise-augmentation level (schedule time) of the
      conditioning video when sampling (training draws it from U(0, cond_augment_max_t)).
    text: the architecture of the T5 encoder whose embeddings it reads (None: not
      recorded, or a stage without text).
    distilled: for a distilled student, how it was made: {"phase": "guidance" |
      "halving", "w_min", "w_max": the guidance weights it learnt, "steps": its sampling
      steps (halving)}; None for a stage trained as usual.
  """

  name: str
  spec: StageSpec
  unet: UNetConfig
  params: Any
  fps: float
  diffusion: DiffusionConfig = DiffusionConfig()
  sampler: SamplerConfig = SamplerConfig()
  sample_cond_t: float = 0.1
  text: T5Config | None = None
  distilled: Mapping[str, Any] | None = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f'a stage name must be a non-empty string; got {self.name!r}')
    if not _is_real(self.fps) or not (math.isfinite(self.fps) and self.fps > 0):
      raise ValueError(f'stage {self.name}: fps must be finite and > 0; got {self.fps!r}')
    t = self.sample_cond_t
    if not _is_real(t) or not 0.0 <= t <= 1.0:
      raise ValueError(f'stage {self.name}: sample_cond_t must be in [0, 1]; got {t!r}')
    if self.distilled is not None and not (
      isinstance(self.distilled, Mapping) and self.distilled.get('phase') in ('guidance', 'halving')
    ):
      raise ValueError(
        f'stage {self.name}: distilled must be {{"phase": "guidance" | "halving", ...}}; '
        f'got {self.distilled!r}'
      )

  def with_params(self, params: Any) -> Stage:
    return dataclasses.replace(self, params=params)

  def to_json(self) -> dict[str, Any]:
    """The stage without its weights, as stage.json holds it."""
    d = self.diffusion
    out = {
      'name': self.name,
      'fps': self.fps,
      'sample_cond_t': self.sample_cond_t,
      'spec': dataclasses.asdict(self.spec),
      'unet': self.unet.to_dict(),
      'diffusion': {
        'prediction': d.prediction,
        'weighting': d.weighting,
        'min_snr_gamma': d.min_snr_gamma,
        'p_uncond': d.p_uncond,
        'schedule': dataclasses.asdict(d.schedule),
      },
      'sampler': dataclasses.asdict(self.sampler),
    }
    if self.text is not None:
      out['text'] = dataclasses.asdict(self.text)
    if self.distilled is not None:
      out['distilled'] = dict(self.distilled)
    return out

  @classmethod
  def from_json(cls, meta: Mapping[str, Any], params: Any = None) -> Stage:
    """Reads `to_json`'s output; also the stage.json of earlier versions."""
    d = dict(meta['diffusion'])
    d['schedule'] = CosineSchedule(**d['schedule'])
    # Earlier exports called the SR conditioning level `cond_aug_t`.
    cond_t = meta['sample_cond_t'] if 'sample_cond_t' in meta else meta['cond_aug_t']
    text = meta.get('text')
    return cls(
      name=meta['name'],
      spec=StageSpec(**meta['spec']),
      unet=UNetConfig.from_dict(meta['unet']),
      params=params,
      fps=meta['fps'],
      diffusion=DiffusionConfig(**d),
      sampler=sampler_from_json(meta['sampler']),
      sample_cond_t=float(cond_t),
      text=None if text is None else T5Config(**text),
      distilled=meta.get('distilled'),
    )


def _is_real(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


# ------------------------------------------------------------ from a training config
_T5_ARCH = ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_kv', 'd_ff')


def _plain(config: Any) -> Mapping[str, Any]:
  """An ml_collections ConfigDict (or a saved config dict) as nested plain dicts."""
  return config.to_dict() if hasattr(config, 'to_dict') else config


def diffusion_from_config(d: Mapping[str, Any]) -> DiffusionConfig:
  """The `diffusion` section of a training config as a DiffusionConfig."""
  d = _plain(d)
  return DiffusionConfig(
    prediction=d['prediction'],
    weighting=d['weighting'],
    min_snr_gamma=float(d['min_snr_gamma']),
    p_uncond=float(d['p_uncond']),
    schedule=CosineSchedule(float(d['logsnr_min']), float(d['logsnr_max']), float(d['shift'])),
  )


def sampler_from_json(s: Mapping[str, Any]) -> SamplerConfig:
  """A stage.json's sampler. Files written before the oscillation followed the paper
  carry `oscillate_until` (steps that alternated, then the low weight); its default, 1.0,
  means alternating throughout, which `oscillate_from=0` still does. Any other value
  named a schedule the sampler no longer has: refused, naming the field to set."""
  s = dict(s)
  until = s.pop('oscillate_until', None)
  if until is not None and (float(until) != 1.0 and s.get('guidance_low') is not None):
    raise ValueError(
      f'sampler.oscillate_until={until} (alternate, then the low weight) is no longer '
      'supported: guidance now holds the high weight first and alternates after '
      '`oscillate_from` of the steps; replace it in stage.json'
    )
  return SamplerConfig(**s)


def sampler_from_config(s: Mapping[str, Any] | None) -> SamplerConfig:
  """The `sample` section (sample videos during training, the exported default)."""
  s = _plain(s or {})
  return SamplerConfig(
    sampler=s.get('sampler', 'ddim'),
    steps=int(s.get('steps', 64)),
    guidance=float(s.get('guidance', 1.0)),
    clip=s.get('clip', 'static'),
  )


def text_from_config(t: Mapping[str, Any]) -> T5Config | None:
  """The T5 architecture the `text` section names; None if it names none.

  For `source='t5'` the converted checkpoint's own t5_config.json is the truth
  (`text.checkpoints.load_t5`); the section's fields then say what it is expected to be.
  """
  t = _plain(t)
  if not all(k in t for k in _T5_ARCH):
    return None
  return T5Config(**{k: int(t[k]) for k in _T5_ARCH})


def fps_from_config(config: Mapping[str, Any], spec: StageSpec) -> float:
  """The stage's frame rate: `config.fps`, else the source's `data.fps / frame_stride`."""
  config = _plain(config)
  fps = config.get('fps') or float(config['data']['fps']) / spec.frame_stride
  return float(fps)


def from_config(config: Any, params: Any = None) -> Stage:
  """The Stage a training config describes (an ml_collections ConfigDict or its dict).

  Raises ValueError (or TypeError/KeyError for a malformed section) on a bad config.
  """
  c = _plain(config)
  spec = StageSpec(**c['spec'])
  unet = UNetConfig.from_dict(c['model'])
  text = text_from_config(c['text']) if unet.text_dim is not None else None
  return Stage(
    name=str(c['stage']),
    spec=spec,
    unet=unet,
    params=params,
    fps=fps_from_config(c, spec),
    diffusion=diffusion_from_config(c['diffusion']),
    sampler=sampler_from_config(c.get('sample')),
    sample_cond_t=float(c['diffusion'].get('sample_cond_t', 0.1)),
    text=text,
    distilled=distilled_from_config(c.get('distill')),
  )


def distilled_from_config(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """`Stage.distilled` of a run's `distill` section (None: not a distillation run)."""
  d = _plain(d or {})
  phase = str(d.get('phase', '') or '')
  if not phase:
    return None
  out = {'phase': phase, 'w_min': float(d['w_min']), 'w_max': float(d['w_max'])}
  if phase == 'halving':
    out['steps'] = int(d['student_steps'])
  return out
