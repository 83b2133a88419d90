"""Fréchet distance (shared by FVD and the judge's FD) and prompt-adherence reports.

``frechet_distance`` is the standard formula of FID/FVD (Heusel et al. 2017):

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))

with ``scipy.linalg.sqrtm``; when the product is near-singular (few samples, many
features) a small multiple of the identity is added, as the reference implementation
does, and the tiny imaginary part rounding leaves is dropped.

Prompt adherence: each sample's prompt is parsed (``digits.parse_caption``) and compared
with what the judge read, per attribute and all three together, separately for the
training combinations and the held-out ones (seen only as images in training).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imagen_video_jax.data import digits

ATTRIBUTES = ('digit', 'colour', 'direction')


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features ``[N, D]`` (N >= 2), in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f'need features [N >= 2, D]; got shape {f.shape}')
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a: np.ndarray | tuple, b: np.ndarray | tuple, eps: float = 1e-6) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets.

  ``a`` and ``b`` are features ``[N, D]`` or ``(mean, cov)`` pairs from
  :func:`gaussian_stats`.
  """
  from scipy import linalg

  mu1, s1 = a if isinstance(a, tuple) else gaussian_stats(a)
  mu2, s2 = b if isinstance(b, tuple) else gaussian_stats(b)
  if mu1.shape != mu2.shape:
    raise ValueError(f'feature sizes differ: {mu1.shape} vs {mu2.shape}')
  diff = mu1 - mu2
  with warnings.catch_warnings():  # singular products are expected (N < D): handled below
    warnings.simplefilter('ignore', linalg.LinAlgWarning)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      offset = np.eye(len(s1)) * eps
      covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = np.real(covmean)
  return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def wilson_interval(right: int, num: int, z: float = 1.959964) -> tuple[float, float]:
  """The Wilson score interval (95% for the default z) of a proportion right / num.

  Unlike the normal approximation it stays inside [0, 1] and is not empty at 0% or 100%,
  which is where adherence figures of a good model lie.
  """
  if num <= 0:
    raise ValueError(f'num must be > 0; got {num}')
  if not 0 <= right <= num:
    raise ValueError(f'right must be in [0, num={num}]; got {right}')
  p = right / num
  denom = 1.0 + z * z / num
  centre = (p + z * z / (2 * num)) / denom
  half = z * np.sqrt(p * (1 - p) / num + z * z / (4 * num * num)) / denom
  # Exact ends at 0% and 100% (the formula reaches them only up to rounding).
  lo = 0.0 if right == 0 else max(0.0, centre - half)
  hi = 1.0 if right == num else min(1.0, centre + half)
  return float(lo), float(hi)


def adherence_report(
  prompts: Sequence[str],
  predicted: Sequence[tuple[int, str, str]],
  held_out: Sequence[tuple[int, str, str]] = digits.DEFAULT_HELD_OUT,
) -> dict[str, Any]:
  """Per-attribute and all-three accuracy of ``predicted`` against ``prompts``.

  Returns ``{"train_combinations": {...}, "held_out_combinations": {...}}``, each with
  ``num``, ``digit``, ``colour``, ``direction`` and ``all`` (fractions), ``ci95``
  (each of those four's 95% Wilson interval, ``[low, high]``), plus
  ``per_combination`` counts so a failing combination can be found, and
  ``direction_errors``: how many wrong directions were the opposite of the prompt's
  (right axis, wrong sign: "left" drawn as "right") and how many perpendicular (wrong
  axis). The two failures have different causes: see the Evaluation notes in
  checkpoints/digits/MODEL_CARD.md.
  """
  if len(prompts) != len(predicted):
    raise ValueError(f'{len(prompts)} prompts but {len(predicted)} predictions')
  held = {tuple(c) for c in held_out}
  groups: dict[str, list] = {'train_combinations': [], 'held_out_combinations': []}
  for prompt, pred in zip(prompts, predicted):
    truth = digits.parse_caption(prompt)
    if truth[2] is None:
      raise ValueError(f'{prompt!r} names no direction: adherence needs video prompts')
    name = 'held_out_combinations' if truth in held else 'train_combinations'
    groups[name].append((truth, tuple(pred)))
  report: dict[str, Any] = {}
  for name, pairs in groups.items():
    entry: dict[str, Any] = {'num': len(pairs)}
    right = {a: sum(p[k] == t[k] for t, p in pairs) for k, a in enumerate(ATTRIBUTES)}
    right['all'] = sum(p == t for t, p in pairs)
    for attr, r in right.items():
      entry[attr] = r / len(pairs) if pairs else None
    entry['ci95'] = (
      {a: list(wilson_interval(r, len(pairs))) for a, r in right.items()} if pairs else None
    )
    per: dict[str, list[int]] = {}
    for t, p in pairs:
      c = per.setdefault(digits.caption_for(*t), [0, 0])
      c[0] += p == t
      c[1] += 1
    entry['per_combination'] = {k: {'right': r, 'num': n} for k, (r, n) in sorted(per.items())}
    wrong = [(t[2], p[2]) for t, p in pairs if p[2] != t[2]]
    opposite = sum(_is_opposite(a, b) for a, b in wrong)
    entry['direction_errors'] = {'opposite': opposite, 'perpendicular': len(wrong) - opposite}
    report[name] = entry
  return report


def _is_opposite(a: str, b: str) -> bool:
  """Whether two direction names point opposite ways (same axis, other sign)."""
  (ax, ay), (bx, by) = digits.DIRECTIONS[a], digits.DIRECTIONS[b]
  return (ax, ay) == (-bx, -by)


def format_table(report: Mapping[str, Any]) -> str:
  """A plain-text table of an adherence report (and any scalar metrics in it); each
  group's second row holds the 95% intervals (reports that predate them have none)."""
  lines = [f'{"combinations":<24}{"n":>6}' + ''.join(f'{a:>11}' for a in (*ATTRIBUTES, 'all'))]
  for name in ('train_combinations', 'held_out_combinations'):
    entry = report.get(name)
    if not entry:
      continue
    cells = ''.join(
      f'{"-":>11}' if entry[a] is None else f'{100 * entry[a]:>10.1f}%'
      for a in (*ATTRIBUTES, 'all')
    )
    errors = entry.get('direction_errors')
    if errors and sum(errors.values()):
      cells += (
        f'   (wrong directions: {errors["opposite"]} opposite, '
        f'{errors["perpendicular"]} perpendicular)'
      )
    lines.append(f'{name.replace("_combinations", ""):<24}{entry["num"]:>6}' + cells)
    ci = entry.get('ci95')
    if ci:
      lines.append(
        f'{"  95% interval":<30}'
        + ''.join(
          f'{f"{100 * ci[a][0]:.0f}-{100 * ci[a][1]:.0f}%":>11}' for a in (*ATTRIBUTES, 'all')
        )
      )
  for key, value in report.items():
    if isinstance(value, (int, float)):
      lines.append(f'{key}: {value:.4g}')
  return '\n'.join(lines)


def sample_prompts(
  num: int, seed: int, held_out: bool, world: digits.DigitsConfig = digits.DigitsConfig()
) -> list[str]:
  """``num`` video prompts drawn uniformly from the training or held-out combinations."""
  combos = list(world.held_out if held_out else world.train_combinations)
  if not combos:
    raise ValueError(
      'no held-out combinations to sample' if held_out else 'no training combinations to sample'
    )
  rng = np.random.default_rng([seed, int(held_out)])
  return [digits.caption_for(*combos[i]) for i in rng.integers(len(combos), size=num)]


def judge_for_cascade(pipe, judge):
  """The judge reading the cascade's own Moving Digits world: digit and colour need no
  change (the CNN learnt them from still images, the same in every version), direction is
  read with that version's motion (v1 fits a bounce, v2 straight motion). A cascade that
  records no world (an export that predates it) is read with ``judge`` as it is."""
  world = getattr(pipe, 'world', None)
  if not world or world.get('name') != 'digits':
    return judge
  return judge.for_world(int(world['version']))


def evaluate_cascade(
  pipe,
  judge,
  *,
  num_samples: int = 100,
  seed: int = 0,
  world: digits.DigitsConfig = digits.DigitsConfig(),
  batch_size: int = 16,
  samplers_by_stage=None,
  progress: bool = True,
  real_fd_clips: int = 0,
  given: str | None = None,
  num_given: int | None = None,
  fps: float | None = None,
) -> dict[str, Any]:
  """Samples a cascade on training and held-out prompts and judges the videos.

  The judge reads every stage's output of the same samples (it resizes any video to its
  own frame size), so the report also says where along the cascade adherence is lost.

  Args:
    pipe: a ``CascadePipeline`` (``export.load_cascade(dir)``); pass
      ``CascadePipeline(pipe.stages[:1], pipe.text_encoder, world=pipe.world)`` to score
      the base alone.
    judge: a :class:`~imagen_video_jax.evaluation.judge.Judge`; it reads direction with
      the motion of the world version the cascade records (:func:`judge_for_cascade`).
    num_samples: samples per group (training combinations, held-out combinations).
    seed: prompt and sampling seed.
    world: the Moving Digits world the cascade was trained on (its held-out list).
    batch_size: prompts per cascade call (bounds memory).
    real_fd_clips: if > 0, also the judge's Fréchet distance between the samples of
      training combinations and this many fresh real clips (``fd_judge``).
    given: score sampling from given frames (a cascade trained with frame conditioning):
      'animate', 'extend' or 'interpolate'. The prompts are then the captions of real
      clips of the world (``judge.real_clips``, this seed), and each sample is given its
      clip's frames where ``mode`` puts them (:func:`given_clip_frames`); the report adds
      ``given`` (:func:`given_frame_errors`).
    num_given: how many frames are given (default: 1 to animate, half the base stage's
      frames to extend, 2 (first and last) to interpolate).
    fps: sample at this frame rate (a cascade trained with fps conditioning; see
      ``CascadePipeline.stage_rates``); default the cascade's own.
  Returns:
    :func:`adherence_report` of the last stage's videos plus ``fps``, ``stages`` (the
    stage names), ``samplers`` (each stage's sampler settings), ``by_stage`` (an
    adherence report of each stage's output, last included), ``speed`` (the judge's
    median pixels per frame of the training combinations' videos: their mean and its
    95% interval, ``Judge.speed``) and, optionally, ``fd_judge``.
  """
  from tqdm.auto import tqdm

  judge = judge_for_cascade(pipe, judge)
  frames = None
  if given is None:
    prompts = sample_prompts(num_samples, seed, False, world) + sample_prompts(
      num_samples, seed, True, world
    )
  else:
    from imagen_video_jax.evaluation.judge import real_clips

    clips, truth = zip(
      *(real_clips(judge.config, num_samples, seed, held_out=h) for h in (False, True))
    )
    clips = np.concatenate(clips)
    prompts = [digits.caption_for(*t) for t in truth[0] + truth[1]]
    num_given = default_num_given(pipe, given) if num_given is None else num_given
    step = clip_step(pipe, judge.config.world.fps, fps)
    frames, clip_positions = given_clip_frames(pipe, clips, given, num_given, step)
  names = [s.name for s in pipe.stages]
  by_stage: dict[str, list[np.ndarray]] = {n: [] for n in names}
  for i in tqdm(
    range(0, len(prompts), batch_size), desc='cascade', unit='batch', disable=not progress
  ):
    batch = prompts[i : i + batch_size]
    extra = {} if frames is None else {'given': frames[i : i + batch_size], 'mode': given}
    out = pipe(
      batch,
      num_samples=1,
      seed=seed + i,
      samplers_by_stage=samplers_by_stage,
      progress=False,
      return_intermediates=True,
      fps=fps,
      **extra,
    )
    for n in names:
      by_stage[n].append(out.intermediates[n])
  rates = pipe.stage_rates(fps)
  reports = {
    stage.name: adherence_report(
      prompts,
      judge.predict(np.concatenate(by_stage[stage.name]), fps=rate or stage.fps).as_tuples(),
      world.held_out,
    )
    for stage, rate in zip(pipe.stages, rates)
  }
  videos = np.concatenate(by_stage[names[-1]])
  fps = float(pipe.stages[-1].fps if fps is None else fps)
  report = {**reports[names[-1]], 'by_stage': reports, 'stages': names, 'fps': fps}
  report['speed'] = mean_and_interval(judge.speed(videos[:num_samples]))
  # The settings the figures were sampled with (each stage's own, or the overrides).
  report['samplers'] = {
    s.name: dataclasses.asdict((samplers_by_stage or {}).get(s.name, s.sampler))
    for s in pipe.stages
  }
  if given is not None:
    report['given'] = {
      'mode': given,
      'num_given': num_given,
      'clip_frames': [int(p) for p in clip_positions],
      **given_frame_errors(
        pipe, {n: np.concatenate(v) for n, v in by_stage.items()}, clips, given, num_given, step
      ),
    }
  if real_fd_clips > 0:
    from imagen_video_jax.evaluation.judge import real_clips

    real, _ = real_clips(judge.config, real_fd_clips, seed + 1, held_out=False)
    report['fd_judge'] = frechet_distance(
      judge.features(real), judge.features(videos[:num_samples], fps=fps)
    )
  return report


def mean_and_interval(values: np.ndarray, z: float = 1.959964) -> dict[str, Any]:
  """{'mean', 'ci95': [low, high]} of values (the normal interval of their mean)."""
  v = np.asarray(values, np.float64)
  half = z * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float('nan')
  return {'mean': float(v.mean()), 'ci95': [float(v.mean() - half), float(v.mean() + half)]}


def default_num_given(pipe, mode: str) -> int:
  """1 to animate, half the base stage's frames to extend, 2 to interpolate."""
  return {'animate': 1, 'extend': pipe.stages[0].spec.frames // 2, 'interpolate': 2}[mode]


def clip_step(pipe, clip_fps: float, fps: float | None = None) -> int:
  """Clip frames per base frame: real clips at `clip_fps` against the base stage's rate
  (its own, or its share of `fps`, `CascadePipeline.stage_rates`). Raises ValueError
  unless it is a whole number >= 1."""
  rate = pipe.stage_rates(fps)[0] if hasattr(pipe, 'stage_rates') else None
  base_fps = float(pipe.stages[0].fps if rate is None else rate)
  step = clip_fps / base_fps
  if step < 1 or abs(step - round(step)) > 1e-6:
    raise ValueError(
      f'clips at {clip_fps:g} fps cannot give frames of a base stage at {base_fps:g} fps '
      '(a whole number of clip frames per base frame is needed)'
    )
  return int(round(step))


def given_clip_frames(pipe, clips: np.ndarray, mode: str, num_given: int, step: int):
  """(given frames [N, G, H, W, 3], their frames in the clips): the frames of real
  clips [N, T, H, W, 3] a user would give in `mode`: base frame i is clip frame i * step
  (`clip_step`)."""
  from imagen_video_jax.diffusion import frame_cond

  base = frame_cond.given_positions(mode, num_given, pipe.stages[0].spec.frames)
  at = base * step
  if at.max() >= clips.shape[1]:
    raise ValueError(f'clips of {clips.shape[1]} frames are too short for frames {list(at)}')
  return clips[:, at], at


def given_frame_errors(
  pipe,
  videos: Mapping[str, np.ndarray],
  clips: np.ndarray,
  mode: str,
  num_given: int,
  step: int,
) -> dict[str, Any]:
  """How closely each stage's videos hand back the given frames: the mean absolute
  difference (0-255) between each stage's frames where the given ones went and those
  frames resized to the stage's size (``by_stage``), and for scale the mean absolute
  difference between successive frames of the clips at the base stage's frame rate
  (``successive_base_frames``; base frame i is clip frame i * step)."""
  import jax

  from imagen_video_jax.diffusion import frame_cond

  base = frame_cond.given_positions(mode, num_given, pipe.stages[0].spec.frames)
  given = clips[:, base * step].astype(np.float32)
  out = {}
  from imagen_video_jax.cascade import time_strides

  for stage, s in zip(pipe.stages, time_strides(pipe.stages)):
    spec = stage.spec
    n, g = given.shape[:2]
    want = jax.image.resize(
      given.reshape(n * g, *given.shape[2:]),
      (n * g, spec.height, spec.width, 3),
      'bilinear',
      antialias=True,
    )
    got = videos[stage.name][:, base * s].astype(np.float32)
    out[stage.name] = float(np.abs(got.reshape(want.shape) - np.asarray(want)).mean())
  seq = clips[:, ::step].astype(np.float32)
  return {
    'mean_abs_error_by_stage': out,
    'successive_base_frames': float(np.abs(seq[:, 1:] - seq[:, :-1]).mean()),
  }


def evaluate_long_videos(
  pipe,
  judge,
  *,
  length_factor: int = 2,
  extend=None,
  num_samples: int = 50,
  seed: int = 0,
  world: digits.DigitsConfig = digits.DigitsConfig(),
  batch_size: int = 8,
  samplers_by_stage=None,
  progress: bool = True,
) -> dict[str, Any]:
  """Samples videos `length_factor` times the cascade's length on training-combination
  prompts (`CascadePipeline(length=..., extend=extend)`) and has the judge read each
  consecutive piece of the cascade's own length.

  Returns ``{"num", "length_factor", "extend", "pieces": the judge's accuracy on every
  piece, by attribute and all three (a list, first piece first), "all_pieces_right":
  the fraction of videos every piece of which shows all three attributes of the prompt
  (with its 95% interval), "consistent": the fraction whose pieces all read the same
  (digit, colour, direction), right or not, and "consistent_by_attribute": that fraction
  per attribute (in world v2 a digit stops short of the wall within one clip, so a later
  piece may hold it still and its direction reads as chance; digit and colour do not
  depend on the motion), "moving": the fraction of later pieces (after the first) whose
  digit covers at least half the least distance a world v2 clip travels, and
  "direction_kept_when_moving": of those, the fraction whose direction reads as the first
  piece's}``.
  """
  from tqdm.auto import tqdm

  from imagen_video_jax.diffusion.extend import ExtendConfig

  extend = ExtendConfig() if extend is None else extend
  judge = judge_for_cascade(pipe, judge)
  prompts = sample_prompts(num_samples, seed, False, world)
  base = pipe.stages[0].spec.frames
  videos = []
  for i in tqdm(range(0, len(prompts), batch_size), desc='long videos', disable=not progress):
    out = pipe(
      prompts[i : i + batch_size],
      seed=seed + i,
      length=base * length_factor,
      extend=extend,
      samplers_by_stage=samplers_by_stage,
      progress=False,
    )
    videos.append(out.videos)
  videos = np.concatenate(videos)
  frames = videos.shape[1] // length_factor
  truth = [digits.parse_caption(p) for p in prompts]
  pieces_v = [videos[:, k * frames : (k + 1) * frames] for k in range(length_factor)]
  reads = [judge.predict(v, fps=pipe.stages[-1].fps).as_tuples() for v in pieces_v]
  # A piece moves when its digit covers half the least travel of a world v2 clip.
  still_below = 0.5 * min(world.travel) * judge.config.size
  moving = [judge.displacement(v) >= still_below for v in pieces_v[1:]]
  d = ATTRIBUTES.index('direction')
  kept = [
    reads[k + 1][n][d] == reads[0][n][d]
    for k, m in enumerate(moving)
    for n in range(len(prompts))
    if m[n]
  ]
  pieces = []
  for got in reads:
    entry = {
      a: float(np.mean([g[j] == t[j] for g, t in zip(got, truth)]))
      for j, a in enumerate(ATTRIBUTES)
    }
    entry['all'] = float(np.mean([tuple(g) == tuple(t) for g, t in zip(got, truth)]))
    pieces.append(entry)
  right = sum(all(tuple(r[n]) == tuple(truth[n]) for r in reads) for n in range(len(prompts)))
  same = sum(len({tuple(r[n]) for r in reads}) == 1 for n in range(len(prompts)))
  same_by = {
    a: float(np.mean([len({r[n][j] for r in reads}) == 1 for n in range(len(prompts))]))
    for j, a in enumerate(ATTRIBUTES)
  }
  return {
    'num': len(prompts),
    'length_factor': length_factor,
    'extend': dataclasses.asdict(extend),
    'pieces': pieces,
    'all_pieces_right': right / len(prompts),
    'all_pieces_right_ci95': list(wilson_interval(right, len(prompts))),
    'consistent': same / len(prompts),
    'consistent_by_attribute': same_by,
    'moving': float(np.mean(moving)),
    'direction_kept_when_moving': float(np.mean(kept)) if kept else None,
  }


def write_report(path: str, report: Mapping[str, Any]) -> str:
  """Writes the report as indented JSON."""
  import os

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write('\n')
  return path
