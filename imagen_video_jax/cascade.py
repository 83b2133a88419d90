"""The cascade: prompt(s) -> T5 -> base -> each TSR / SSR stage -> uint8 video.

Each stage is sampled by `sampling.sample_stage` (the function training's sample
videos use too): a super-resolution stage conditioned on the stage below exactly as
in training, noised at its fixed `sample_cond_t`. Every stage samples in one jitted
loop with cond and uncond in one batched forward, its initial noise a donated argument
(the output reuses that buffer). What users change often does not
recompile: the compiled samplers are cached per stage and sampler kind and clipping,
and take the step count, guidance and key as values; the batch (prompts x num_samples)
is padded to a power of two (`batch_bucket`) and the padded rows dropped, so a few
compiled shapes serve every batch size.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax import io
from imagen_video_jax.diffusion import frame_cond
from imagen_video_jax.diffusion.extend import ExtendConfig
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.sampling import initial_noise, noise_shape, sample_stage
from imagen_video_jax.stage import Stage

TextEncoderFn = Callable[[Sequence[str]], tuple[Any, Any]]


class NonFiniteSampleError(FloatingPointError):
  """A stage sampled NaN or inf: such a video is an error, not a black file."""


class UnknownPromptError(ValueError):
  """A prompt holds words the cascade was never trained on (`strict=True`)."""


class UnknownPromptWarning(UserWarning):
  """A prompt holds words the cascade was never trained on: its videos cannot follow them."""


# A long video is at most this many times the base stage's frames.
MAX_LENGTH_FACTOR = 16

# Open vocabularies: warn when more than this fraction of a prompt's words are unknown.
UNKNOWN_WORD_RATE = 0.25
_LIST_AT_MOST = 40  # known words listed in full up to this many, else summarised


def _known_words(vocabulary: Sequence[str]) -> str:
  words = sorted(vocabulary, key=lambda w: (not w.isdigit(), w))
  if len(words) <= _LIST_AT_MOST:
    return f'it knows only these {len(words)} words: {" ".join(words)}'
  return f'it knows {len(words)} words, e.g. {" ".join(words[:20])} ...'


@dataclasses.dataclass
class CascadeOutput:
  """videos: uint8 [N, T, H, W, 3] at `fps`; intermediates: every stage's output by name."""

  videos: np.ndarray
  fps: float
  prompts: list[str]
  intermediates: dict[str, np.ndarray] | None = None

  def save(self, stem: str, *, scale: int = 1) -> list[dict[str, str]]:
    """Writes stem.mp4/.gif/.png (stem_i.* for several videos); returns the paths."""
    return [
      io.write_video_files(s, v, self.fps, scale=scale)
      for s, v in zip(output_stems(stem, len(self.videos)), self.videos)
    ]


def output_stems(stem: str, num_videos: int) -> list[str]:
  """The file stems `CascadeOutput.save` writes: stem, or stem_0, stem_1, ..."""
  return [stem] if num_videos == 1 else [f'{stem}_{i}' for i in range(num_videos)]


class CascadePipeline:
  """Text-to-video sampling through a chain of stages.

  Args:
    stages: base first, then each SR stage; each stage's conditioning size must be
      the previous stage's output size.
    text_encoder: prompts -> (text_emb [B, L, D], text_mask [B, L]); e.g. a
      `text.encoder.TextEncoder`. May be None only if no stage reads text.
    vocabulary: every word the stages' training captions use, for a cascade trained on a
      closed caption set (the Moving Digits world's); None for an open vocabulary.
    world: the synthetic world the stages were trained on, e.g. ``{"name": "digits",
      "version": 2}`` (an export records it); None when unknown.

  Prompts are checked before sampling (`check_prompts`): with a vocabulary, any word
  outside it is reported; without one, when more than `UNKNOWN_WORD_RATE` of a prompt's
  words are unknown to the text encoder's tokenizer (`Tokenizer.unknown_words`: words
  that encode as <unk> or are spelled out in pieces of under two characters on
  average). A report is an `UnknownPromptWarning`, or with `strict=True` an
  `UnknownPromptError` before sampling.
  """

  def __init__(
    self,
    stages: Sequence[Stage],
    text_encoder: TextEncoderFn | None,
    *,
    vocabulary: Sequence[str] | None = None,
    world: Mapping[str, Any] | None = None,
  ):
    if not stages:
      raise ValueError('a cascade needs at least one stage')
    if stages[0].spec.is_sr:
      raise ValueError(f'the first stage ({stages[0].name}) must be a base stage')
    for prev, st in zip(stages, stages[1:]):
      if not st.spec.is_sr:
        raise ValueError(f'stage {st.name} follows {prev.name} but is not a TSR/SSR stage')
      want = (st.spec.cond_frames, st.spec.cond_height, st.spec.cond_width)
      have = (prev.spec.frames, prev.spec.height, prev.spec.width)
      if want != have:
        raise ValueError(
          f'stage {st.name} is conditioned on {want[0]}x{want[1]}x{want[2]} '
          f'(frames x H x W) but {prev.name} makes {have[0]}x{have[1]}x{have[2]}'
        )
    if text_encoder is None and any(s.unet.text_dim is not None for s in stages):
      raise ValueError('the stages read text: pass a text_encoder')
    self.stages = list(stages)
    self.text_encoder = text_encoder
    self.vocabulary = None if vocabulary is None else frozenset(vocabulary)
    # The synthetic world the stages were trained on ({"name", "version"}; None: unknown),
    # so an evaluation reads it with a judge of the same world.
    self.world = None if world is None else dict(world)
    self._compiled: dict[tuple[int, SamplerConfig], Callable] = {}
    self._on_step: Callable[[Any], None] = lambda i: None

  def check_prompts(self, prompts: str | Sequence[str]) -> str | None:
    """What is wrong with `prompts` for this cascade (one message), or None.

    With a recorded vocabulary: the words outside it, and the words it knows. Without
    one: the prompts whose share of words the tokenizer does not know (see the class
    doc) exceeds `UNKNOWN_WORD_RATE`. Prompts are split into words on whitespace.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if self.text_encoder is None or not any(s.unet.text_dim for s in self.stages):
      return None
    if self.vocabulary is not None:
      bad = {p: [w for w in p.split() if w not in self.vocabulary] for p in prompts}
      bad = {p: ws for p, ws in bad.items() if ws}
      if not bad:
        return None
      words = sorted({w for ws in bad.values() for w in ws})
      return (
        f'this cascade was never trained on the word(s) {", ".join(map(repr, words))} (in '
        f'{", ".join(map(repr, bad))}): its videos cannot follow them; '
        f'{_known_words(self.vocabulary)}'
      )
    tokenizer = getattr(self.text_encoder, 'tokenizer', None)
    if tokenizer is None or not hasattr(tokenizer, 'unknown_words'):
      return None
    reports = []
    for p in prompts:
      unknown, n = tokenizer.unknown_words(p), len(p.split())
      if n and len(unknown) / n > UNKNOWN_WORD_RATE:
        reports.append(f'{p!r} ({len(unknown)} of {n}: {", ".join(map(repr, unknown))})')
    if not reports:
      return None
    return (
      "the text encoder's vocabulary does not hold many of the prompt's words (they encode "
      'as <unk> or are spelled out almost letter by letter): ' + '; '.join(reports)
    )

  def _sampler(
    self, index: int, cfg: SamplerConfig, extend: ExtendConfig | None = None
  ) -> Callable:
    """run(params, emb, mask, neg_emb, neg_mask, low, key, z_init, cfg.traced(), known,
    known_frames, fps, extend_frames), jitted; `extend`: the window is conditioned on
    extend_frames = (x_known, known) that way (`diffusion/extend.py`)."""
    # steps and guidance are run's argument, not its program
    key = (index, cfg.static(), extend)
    if key not in self._compiled:
      # z_init (the initial noise, `sampling.initial_noise`) is donated: the sampled
      # video has its shape and dtype, so XLA writes the output into that buffer rather
      # than allocating another. Nothing else can be: params and text serve the next
      # stage and call, and `low` (the stage below) has another shape (JAX would warn
      # that it is not usable).
      self._compiled[key] = jax.jit(
        self._make_sampler(self.stages[index], cfg.static(), extend), donate_argnums=7
      )
    return self._compiled[key]

  def _make_sampler(
    self, stage: Stage, cfg: SamplerConfig, extend: ExtendConfig | None = None
  ) -> Callable:
    on_step = lambda i: self._on_step(i)  # stable identity: the jit cache is reused

    def run(
      params,
      emb,
      mask,
      neg_emb,
      neg_mask,
      low,
      key,
      z_init,
      traced,
      known,
      known_frames,
      fps,
      extend_frames,
    ):
      return sample_stage(
        stage,
        params,
        key,
        z_init.shape[0],
        text_emb=emb,
        text_mask=mask,
        neg_text_emb=neg_emb,
        neg_text_mask=neg_mask,
        low=low,
        sampler=cfg,
        on_step=on_step,
        traced=traced,
        z_init=z_init,
        known=known,
        known_frames=known_frames,
        fps=fps,
        extend=None if extend is None else (*extend_frames, extend),
      )

    return run

  def _run_stage(self, i, cfg, texts, low, key, batch, given, rate, progress, extend=None):
    """One stage's sampler on one batch (a window of a long video: `extend` =
    (ExtendConfig, (x_known, known))), checked finite; returns the video."""
    stage = self.stages[i]
    bar = _progress(stage.name, cfg.steps, progress)
    self._on_step = lambda _, bar=bar: bar.update(1)
    ext_cfg, ext_frames = extend or (None, None)
    try:
      video = self._sampler(i, cfg, ext_cfg)(
        stage.params,
        *texts,
        low,
        key,
        _initial_noise(key, noise_shape(stage, batch)),
        cfg.traced(),
        *given,
        rate,
        ext_frames,
      )
      video = jax.block_until_ready(video)
    finally:
      self._on_step = lambda i: None
      bar.close()
    return video

  def given_frames(
    self, given: Any, mode: str | None, rows: int | Sequence[int]
  ) -> dict[int, tuple[jax.Array, jax.Array]]:
    """{stage index: (known [B, T], known_frames [B, T, H, W, 3])} for the stages that
    read given frames (`unet.frame_cond`), B the batch's rows.

    given: one image [H, W, 3] or frames [G, H, W, 3] for every row; or one set per
      prompt, [P, G, H, W, 3]. uint8 (0..255) or float in [-1, 1], at any size (each
      stage gets them resized to its own).
    mode: where they go (`diffusion.frame_cond.given_positions`) in the base stage's
      frames: 'animate' (one image: the first frame; the default for one image),
      'extend' (the first G frames) or 'interpolate' (the first and last, or every other
      frame). A TSR stage of factor f has base frame i at its frame i * f.
    rows: the batch size B (one set for every row), or each row's prompt (per-prompt sets).
    Raises ValueError naming the problem.
    """
    frames = np.asarray(given)
    if frames.ndim in (3, 4):
      frames = frames[None, None] if frames.ndim == 3 else frames[None]
      rows = np.zeros(rows if isinstance(rows, int) else len(rows), int)
    elif frames.ndim == 5 and not isinstance(rows, int) and len(frames) > max(rows):
      rows = np.asarray(rows)
    else:
      raise ValueError(
        'given frames must be one RGB image [H, W, 3], frames [G, H, W, 3], or a set per '
        f'prompt [P, G, H, W, 3]; got shape {tuple(np.shape(given))}'
      )
    if frames.shape[-1] != 3 or 0 in frames.shape:
      raise ValueError(
        f'given frames must be RGB (3 channels, none empty); got shape {tuple(np.shape(given))}'
      )
    if frames.dtype == np.uint8:
      frames = frames.astype(np.float32) / 127.5 - 1.0
    elif not np.issubdtype(frames.dtype, np.floating):
      raise ValueError(f'given frames must be uint8 or float in [-1, 1]; got {frames.dtype}')
    elif not (np.isfinite(frames).all() and np.abs(frames).max() <= 1.0 + 1e-6):
      raise ValueError('given float frames must be finite and in [-1, 1] (or pass uint8)')
    readers = [i for i, s in enumerate(self.stages) if s.unet.frame_cond]
    if not readers:
      raise ValueError(
        'no stage of this cascade reads given frames (none was trained with '
        'model.frame_cond=True): it samples from text only'
      )
    sets, num = frames.shape[:2]
    if mode is None:
      if num != 1:
        raise ValueError(f"{num} given frames: say where they go (mode='extend' or 'interpolate')")
      mode = 'animate'
    positions = frame_cond.given_positions(mode, num, self.stages[0].spec.frames)
    out = {}
    for i, (stage, stride) in enumerate(zip(self.stages, time_strides(self.stages))):
      if i not in readers:
        continue
      spec = stage.spec
      flat = frames.reshape((sets * num,) + frames.shape[2:])
      sized = jax.image.resize(
        jnp.asarray(flat), (sets * num, spec.height, spec.width, 3), 'bilinear', antialias=True
      ).reshape(sets, num, spec.height, spec.width, 3)
      known, placed = frame_cond.place(sized, positions * stride, spec.frames)
      out[i] = (known[rows], placed[rows])
    return out

  def stage_rates(self, fps: float | None) -> list[Any]:
    """Each stage's frame rate when the videos are to play at `fps`: for the stages that
    read it (`unet.fps_embed`) `fps` / (the product of the TSR factors after the stage),
    float32; None for the others. `fps` None: every stage's own (`stage.fps`). Raises
    ValueError if no stage reads a frame rate or `fps` is not > 0."""
    readers = [s.unet.fps_embed for s in self.stages]
    if fps is not None:
      if not any(readers):
        raise ValueError(
          'no stage of this cascade reads a frame rate (none was trained with '
          f'model.fps_embed=True): its videos play at {self.stages[-1].fps:g} fps'
        )
      if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f'fps must be a number > 0; got {fps}')
    strides = time_strides(self.stages)
    return [
      (np.float32(stage.fps if fps is None else fps * s / strides[-1]) if reads else None)
      for stage, reads, s in zip(self.stages, readers, strides)
    ]

  def frames_per_base_frame(self) -> int:
    """The last stage's frames per base frame (the product of the TSR factors)."""
    return time_strides(self.stages)[-1]

  def windows(self, length: int, overlap: int) -> list[int]:
    """The base stage's windows of a long video of `length` base frames, each sharing
    `overlap` frames with the one before: their first frames (the last window may run
    past `length`; the videos are cut to it). Raises ValueError for a bad length."""
    t = self.stages[0].spec.frames
    if not t <= length <= MAX_LENGTH_FACTOR * t:
      raise ValueError(
        f'length must be {t} to {MAX_LENGTH_FACTOR * t} base frames (the base stage makes '
        f'{t} at a time); got {length}'
      )
    if not 1 <= overlap < t:
      raise ValueError(f'overlap must be 1 to {t - 1} frames of the base stage; got {overlap}')
    step = t - overlap
    return [j * step for j in range(max(0, -(-(length - t) // step)) + 1)]

  def _long_videos(self, cfgs, texts, key, batch, rates, progress, length, ext):
    """Every stage's video of a long clip, `length` base frames: the base window by window,
    each new window conditioned on the `ext.overlap` frames it shares with the video so
    far (`diffusion/extend.py`); each SR stage window by window on those windows of the
    stage below, the windows' shared frames blended linearly."""
    base = self.stages[0].spec
    starts = self.windows(length, ext.overlap)
    key0 = jax.random.fold_in(key, 0)
    video = None
    for j, start in enumerate(starts):
      # The first window draws what a short video draws: a long video begins as it.
      k = key0 if j == 0 else jax.random.fold_in(key0, j)
      if j == 0:
        video = self._run_stage(0, cfgs[0], texts, None, k, batch, (None, None), rates[0], progress)
        continue
      known = jnp.zeros((batch, base.frames), bool).at[:, : ext.overlap].set(True)
      x_known = jnp.zeros((batch, base.frames) + video.shape[2:], jnp.float32)
      x_known = x_known.at[:, : ext.overlap].set(video[:, start : start + ext.overlap])
      window = self._run_stage(
        0, cfgs[0], texts, None, k, batch, (None, None), rates[0], progress, (ext, (x_known, known))
      )
      video = jnp.concatenate([video, window[:, ext.overlap :]], axis=1)
    out = [video]
    strides = time_strides(self.stages)
    for i in range(1, len(self.stages)):
      spec = self.stages[i].spec
      scale, s = strides[i - 1], strides[i]  # frames per base frame below and here
      size = base.frames * s  # the stage's frames per window
      total = (starts[-1] + base.frames) * s
      acc = jnp.zeros((batch, total, spec.height, spec.width, 3), jnp.float32)
      weight = jnp.zeros((total,), jnp.float32)
      ramp = _blend_ramp(size, ext.overlap * s)
      key_i = jax.random.fold_in(key, i)
      for j, start in enumerate(starts):
        low = out[-1][:, start * scale : (start + base.frames) * scale]
        win = self._run_stage(
          i,
          cfgs[i],
          texts,
          low,
          key_i if j == 0 else jax.random.fold_in(key_i, j),
          batch,
          (None, None),
          rates[i],
          progress,
        )
        w = ramp.copy()
        if j == 0:
          w[: len(w) // 2] = 1.0  # nothing before the first window to blend with
        if j == len(starts) - 1:
          w[len(w) // 2 :] = 1.0
        at = start * s
        acc = acc.at[:, at : at + size].add(win * w[None, :, None, None, None])
        weight = weight.at[at : at + size].add(w)
      out.append(acc / weight[None, :, None, None, None])
    return [video[:, : length * s] for video, s in zip(out, strides)]  # `length` base frames

  def __call__(
    self,
    prompts: str | Sequence[str],
    *,
    negative_prompt: str | None = None,
    num_samples: int = 1,
    seed: int = 0,
    samplers_by_stage: Mapping[str, SamplerConfig] | None = None,
    return_intermediates: bool = False,
    progress: bool = True,
    strict: bool = False,
    given: Any = None,
    mode: str | None = None,
    fps: float | None = None,
    length: int | None = None,
    extend: ExtendConfig | None = None,
  ) -> CascadeOutput:
    """Samples `num_samples` videos per prompt; returns uint8 videos of the last stage.

    samplers_by_stage: per-stage SamplerConfig overrides (steps, guidance,
    oscillating guidance, thresholding, sampler), keyed by stage name.
    strict: raise `UnknownPromptError` (before sampling) for prompts `check_prompts`
      reports, instead of an `UnknownPromptWarning`.
    given, mode: frames every video (or, [P, G, H, W, 3], each prompt's videos) starts
      from, goes through or continues (image-to-video, interpolation, extension; see
      `given_frames`), for the stages trained with frame conditioning.
    fps: the frame rate of the videos (default: the last stage's), for cascades whose
      stages read it (`unet.fps_embed`, see `stage_rates`).
    length: a video longer than the base stage makes, in base frames (up to
      `MAX_LENGTH_FACTOR` times its own): sampled window by window (`windows`), each new
      window of the base conditioned on the frames it shares with the one before as
      `extend` says (default `ExtendConfig()`: reconstruction guidance, 4 frames), the
      SR stages window by window with the shared frames blended.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or num_samples < 1:
      raise ValueError('give at least one prompt and num_samples >= 1')
    problem = self.check_prompts(prompts + ([negative_prompt] if negative_prompt else []))
    if problem and strict:
      raise UnknownPromptError(problem)
    if problem:
      warnings.warn(problem, UnknownPromptWarning, stacklevel=2)
    overrides = dict(samplers_by_stage or {})
    unknown = set(overrides) - {s.name for s in self.stages}
    if unknown:
      raise ValueError(f'no stage named {sorted(unknown)}; stages: {[s.name for s in self.stages]}')
    batch_prompts = [p for p in prompts for _ in range(num_samples)]
    n = len(batch_prompts)
    # Padded with copies of the last prompt; every row's noise is its own slice of one
    # draw (threefry is partitionable), so a real row samples the same padded or not.
    padded = batch_prompts + batch_prompts[-1:] * (batch_bucket(n) - n)
    if given is None and mode is not None:
      raise ValueError(f'mode={mode!r} without given frames: pass given=')
    given_by_stage = {}
    if given is not None:
      rows = [p for p in range(len(prompts)) for _ in range(num_samples)]
      rows += rows[-1:] * (len(padded) - n)
      if np.ndim(given) == 5 and len(given) != len(prompts):
        raise ValueError(f'{len(given)} sets of given frames for {len(prompts)} prompts')
      given_by_stage = self.given_frames(given, mode, rows)
    rates = self.stage_rates(fps)
    emb = mask = neg_emb = neg_mask = None
    if self.text_encoder is not None:
      emb, mask = (jnp.asarray(a) for a in self.text_encoder(padded))
      if negative_prompt is not None:
        neg_emb, neg_mask = (
          jnp.asarray(a) for a in self.text_encoder([negative_prompt] * len(padded))
        )
    key = jax.random.key(seed)
    texts = (emb, mask, neg_emb, neg_mask)
    cfgs = [overrides.get(s.name, s.sampler) for s in self.stages]
    if length is None:
      videos, video = [], None
      for i, cfg in enumerate(cfgs):
        video = self._run_stage(
          i,
          cfg,
          texts,
          video,
          jax.random.fold_in(key, i),
          len(padded),
          given_by_stage.get(i, (None, None)),
          rates[i],
          progress,
        )
        videos.append(video)
    else:
      if given is not None:
        raise ValueError('given frames and length= (a long video) cannot be combined yet')
      videos = self._long_videos(
        cfgs, texts, key, len(padded), rates, progress, length, extend or ExtendConfig()
      )
    intermediates = {}
    for stage, video in zip(self.stages, videos):
      if not bool(jnp.isfinite(video[:n]).all()):
        raise NonFiniteSampleError(
          f'stage {stage.name} sampled a video with non-finite values (NaN or inf): its '
          'weights or sampler settings are broken'
        )
      if return_intermediates:
        intermediates[stage.name] = io.to_uint8(np.asarray(video[:n]))
    video = videos[-1]
    return CascadeOutput(
      io.to_uint8(np.asarray(video[:n])),
      self.stages[-1].fps if fps is None else float(fps),
      batch_prompts,
      intermediates if return_intermediates else None,
    )


# The initial noise, drawn before each stage's sampler so that the sampler can take it
# as a donated argument; compiled once per shape, it equals what the sampler drew itself.
_initial_noise = jax.jit(initial_noise, static_argnums=1)


def time_strides(stages: Sequence[Any]) -> list[int]:
  """Each stage's frames per base frame: the product of the TSR factors up to it."""
  out, stride = [], 1
  for stage in stages:
    if stage.spec.kind == 'tsr':
      stride *= stage.spec.factor
    out.append(stride)
  return out


def _blend_ramp(size: int, overlap: int) -> np.ndarray:
  """[size] weights of a window in a linear cross-fade: rising over its first `overlap`
  frames, falling over its last, 1 between (two windows' weights sum to 1 where they
  overlap by `overlap` frames)."""
  t = np.arange(size, dtype=np.float32) + 0.5
  return np.minimum(1.0, np.minimum(t, size - t) / overlap).astype(np.float32)


def batch_bucket(n: int) -> int:
  """The batch a cascade samples n videos in: the next power of two (at most 2n - 1)."""
  return 1 << (n - 1).bit_length()


def _progress(name: str, steps: int, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(total=steps, desc=f'stage {name}', unit='step', disable=not enabled, leave=False)
