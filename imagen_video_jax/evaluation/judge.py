"""The Moving Digits judge: which digit, colour and direction a (generated) video shows.

A hybrid, because each attribute has a different robust reader:

* digit and colour: a small Flax CNN (``JudgeNet``, 130k parameters) applied to a
  window centred on the digit in every frame, its log-probabilities averaged over the
  frames. It is trained with optax (``train_judge``, ~100 s on two CPU cores) on frames
  the Moving Digits generator makes from the judge's own seed (never the training
  data's), degraded afresh each step the ways a diffusion sample can be: noise, blur,
  a 2x down-and-up resampling (an SR stage's input), dimming and a grey background.
  Still frames are the same in both worlds, so this part does not depend on the world.
* direction: tracking, not learning. The digit's intensity-weighted centroid is found
  in every frame, and a motion model of the judged world (``JudgeConfig.bounce``) is
  fitted for each of the four directions; the best fit wins. Centroids are barely
  moved by noise and blur. No training, so nothing to overfit.

  - world v2 (``bounce=False``, the default): straight, monotone motion. Along the
    direction's axis ``p(t) = a + sign * s * t`` with ``s >= 0`` (least squares in
    closed form), across it a constant. A clip is read as going where the digit goes,
    as a person reads it: one that wavers or turns is read by its overall trend.
  - world v1 (``bounce=True``): the bouncing world's own model (constant speed in the
    world's speed range from a start point, reflected at the walls). Fitting the
    reflection is what gets clips right that bounce in their first frames (where the
    first step points the "wrong" way), so a v1 judge reads a clip that turns at a
    wall by its first leg.

Features for the Fréchet distance (:meth:`Judge.features`): the CNN's penultimate layer
averaged over frames, followed by the fitted start velocity (pixels per frame, x and y).

Videos of any size are resized to the judge's frame size (32x32 by default). In world v1
their frame rate (``fps``) sets the expected speed, so clips at other frame rates read
correctly; world v2's fit leaves the speed free, so it needs no frame rate.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from imagen_video_jax import params_io
from imagen_video_jax.data import digits

COLOUR_NAMES: tuple[str, ...] = tuple(digits.COLOURS)
DIRECTION_NAMES: tuple[str, ...] = tuple(digits.DIRECTIONS)
PARAMS_FILE = 'params.safetensors'
CONFIG_FILE = 'judge.json'
FORMAT = 'imagen_video_jax.judge/1'
# Where `evaluate --mode=train_judge` writes by default: the checkout's checkpoints/judge.
# load_judge() reads the shipped judge wherever it lies (imagen_video_jax.shipped).
DEFAULT_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  'checkpoints',
  'judge',
)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """The judge's network, the world it judges and how it is trained.

  Attributes:
    size: frame size the judge works at (inputs are resized to it).
    fps: frame rate assumed when a caller gives none (the digits cascade's output rate).
    crop: the CNN sees a ``crop`` x ``crop`` window centred on the digit's centroid
      (the digit is ``size // 2``): position-normalised, so it learns shapes, not places.
    widths: channels of the CNN's stride-2 conv stages.
    embed: width of the penultimate layer (the features).
    seed: seed of the judge's own Moving Digits frames (differs from training data's 0).
    steps, batch_size, learning_rate: optax training.
    noise, blur: maximum Gaussian noise std (in [0, 1] units) and blur sigma (pixels).
    bounce: the world judged: False for world v2 (monotone motion; direction read as
      where the digit goes), True for world v1 (bouncing; direction read by fitting the
      bounce). See :func:`direction_fit`.
  """

  size: int = 32
  fps: float = 8.0
  crop: int = 20
  widths: tuple[int, ...] = (32, 64)
  embed: int = 64
  seed: int = 9_001
  steps: int = 1200
  batch_size: int = 128
  learning_rate: float = 2e-3
  noise: float = 0.15
  blur: float = 1.2
  bounce: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'widths', tuple(int(w) for w in self.widths))
    object.__setattr__(self, 'bounce', bool(self.bounce))
    if (
      self.size < 8
      or self.fps <= 0
      or not self.widths
      or self.embed < 1
      or self.steps < 1
      or self.batch_size < 1
    ):
      raise ValueError(f'bad JudgeConfig: {self}')

  @property
  def world(self) -> digits.DigitsConfig:
    return digits.DigitsConfig(size=self.size, fps=int(round(self.fps)), bounce=self.bounce)

  @property
  def world_version(self) -> int:
    """The Moving Digits world version judged: 2 (monotone motion) or 1 (bouncing)."""
    return digits.WORLD_VERSIONS[self.bounce]


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What the judge read from N videos: names per video, and per-attribute probabilities."""

  digit: np.ndarray  # int [N]
  colour: list[str]
  direction: list[str]
  digit_probs: np.ndarray  # [N, 10]
  colour_probs: np.ndarray  # [N, 7]
  direction_probs: np.ndarray  # [N, 4]

  def as_tuples(self) -> list[tuple[int, str, str]]:
    return [(int(d), c, m) for d, c, m in zip(self.digit, self.colour, self.direction)]


# ----------------------------------------------------------------------------- network


def _net(config: JudgeConfig):
  import flax.linen as nn

  class JudgeNet(nn.Module):
    """Per-frame CNN: centred crops [B, crop, crop, 3] in [0, 1] -> (embedding,
    digit logits, colour logits)."""

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(config.widths[0], (3, 3))(x))
      for w in config.widths:
        x = nn.relu(nn.Conv(w, (3, 3), strides=(2, 2))(x))
      x = x.reshape(x.shape[0], -1)  # the crop is centred, so where a stroke is matters
      emb = nn.relu(nn.Dense(config.embed)(x))
      return emb, nn.Dense(10, name='digit')(emb), nn.Dense(len(COLOUR_NAMES), name='colour')(emb)

  return JudgeNet()


# ----------------------------------------------------------------------------- augmentation


def augment(
  frames: np.ndarray, rng: np.random.Generator, config: JudgeConfig, per_clip: int = 1
) -> np.ndarray:
  """Degrades float frames ``[N, H, W, 3]`` in [0, 1] as an imperfect sample might be.

  Consecutive groups of ``per_clip`` frames share their degradation settings (a clip is
  degraded consistently); the noise itself is drawn per frame.
  """
  from scipy import ndimage

  n = frames.shape[0]
  groups = -(-n // per_clip)

  def draw(lo, hi):
    return np.repeat(rng.uniform(lo, hi, groups), per_clip)[:n]

  out = frames.astype(np.float32, copy=True)
  gain = draw(0.6, 1.1)
  bg = draw(0.0, 0.12) * np.repeat(rng.random(groups) < 0.5, per_clip)[:n]
  # Blur levels come from a few bins so each bin is one vectorised filter call.
  level = np.repeat(rng.integers(0, 4, groups) * (rng.random(groups) < 0.6), per_clip)[:n]
  resample = np.repeat(rng.random(groups) < 0.3, per_clip)[:n]
  noise = draw(0.0, config.noise)
  if resample.any():  # the 2x SR stage's view: half size, then back up
    h, w = out.shape[1:3]
    small = ndimage.zoom(out[resample], (1, 0.5, 0.5, 1), order=1)
    out[resample] = ndimage.zoom(small, (1, h / small.shape[1], w / small.shape[2], 1), order=1)[
      :, :h, :w
    ]
  for k in range(1, 4):
    sel = level == k
    if sel.any():
      s = config.blur * k / 3
      out[sel] = ndimage.gaussian_filter(out[sel], (0, s, s, 0))
  out = out * gain[:, None, None, None] + bg[:, None, None, None]
  out += rng.normal(size=out.shape).astype(np.float32) * noise[:, None, None, None]
  return np.clip(out, 0.0, 1.0)


def _training_frames(config: JudgeConfig, num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Still frames from the judge's own seed: (uint8 [num, H, W, 3], digit, colour index)."""
  world = config.world
  frames = np.zeros((num, config.size, config.size, 3), np.uint8)
  d = np.zeros(num, np.int32)
  c = np.zeros(num, np.int32)
  for i in range(num):
    ex = digits.make_image(world, config.seed, i)
    frames[i], d[i], c[i] = ex.video[0], ex.meta['digit'], COLOUR_NAMES.index(ex.meta['colour'])
  return frames, d, c


# ----------------------------------------------------------------------------- direction


def centroids(videos: np.ndarray) -> np.ndarray:
  """Intensity-weighted digit centres ``[N, T, 2]`` (x, y) of float videos in [0, 1].

  The background level (the frame's median: the digit covers well under half of it)
  plus three robust noise deviations is subtracted first, so noise and a grey veil
  neither drag the centre nor outweigh the digit. On a clean frame nothing is
  subtracted and the centre moves exactly with the (bilinearly splatted) digit.
  """
  w = videos.max(-1)  # [N, T, H, W]
  flat = w.reshape(*w.shape[:2], -1)
  bg = np.median(flat, axis=-1)
  mad = np.median(np.abs(flat - bg[..., None]), axis=-1) * 1.4826
  w = np.clip(w - (bg + 3.0 * mad)[..., None, None], 0.0, None) + 1e-8
  h, wd = w.shape[-2:]
  total = w.sum((-1, -2))
  cx = (w * (np.arange(wd) + 0.5)).sum((-1, -2)) / total
  cy = (w * (np.arange(h) + 0.5)[:, None]).sum((-1, -2)) / total
  return np.stack([cx, cy], -1)


def crop_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """``size`` x ``size`` windows of float frames ``[M, H, W, 3]`` centred on the digit."""
  c = centroids(frames[:, None])[:, 0]  # [M, 2] (x, y)
  padded = np.pad(frames, ((0, 0), (size, size), (size, size), (0, 0)))
  x0 = np.round(c[:, 0] - size / 2).astype(int) + size
  y0 = np.round(c[:, 1] - size / 2).astype(int) + size
  r = np.arange(size)
  m = np.arange(len(frames))[:, None, None]
  return padded[m, (y0[:, None] + r)[:, :, None], (x0[:, None] + r)[:, None, :]]


def _reflect(p: np.ndarray, hi: float) -> np.ndarray:
  """The world's bounce: positions folded into [0, hi] (a triangle wave)."""
  q = np.mod(p, 2 * hi)
  return np.where(q > hi, 2 * hi - q, q)


# A clip that starts against a wall, moving into it, is the same video as one moving
# away from it from that spot (the centroid's offset inside the digit is free, so the
# walls' exact place in centroid coordinates is not known). The world draws starts
# uniformly, so the reading without an immediate bounce is the likelier one: a tiny
# cost on the other breaks the tie. (A Gaussian prior on the offset, tried, did worse.)
_BOUNCE_PENALTY = 0.01  # squared pixels: only breaks exact ties


def _first_step_bounce(p0, sign, speed, hi):
  """The tie-break cost of hypotheses that hit a wall before their second frame."""
  nxt = p0 + sign * speed
  return _BOUNCE_PENALTY * ((nxt < 0.0) | (nxt > hi))


def direction_fit(
  tracks: np.ndarray, config: JudgeConfig, fps: float
) -> tuple[np.ndarray, np.ndarray]:
  """Fits the judged world's motion for each direction: (cost [N, 4], start velocity [N, 2]).

  ``tracks`` are centroid tracks ``[N, T, 2]`` (x, y) in pixels. ``cost`` is the squared
  error of the best trajectory per direction (lower is better), the perpendicular axis's
  squared deviation from its mean included; the velocity is the winning direction's, in
  pixels per frame.

  * world v2 (``config.bounce`` False): ``p(t) = a + sign * s * t`` along the direction's
    axis with ``s >= 0``, by least squares in closed form (the centred regression's
    slope, clipped at 0 in the direction's sense). The speed is free, so ``fps`` is not
    used. Where the digit ends up decides: a clip that turns is read by its trend.
  * world v1 (``config.bounce`` True): the world's bouncing motion (speed within the
    world's range at ``fps``, reflected at the walls), fitted on a start x speed grid
    refined once; the start position, speed and the centroid's offset inside the digit
    are free.
  """
  if not config.bounce:
    return _monotone_fit(tracks)
  world = config.world
  hi = float(world.size - world.sprite_size - 1)
  lo_v, hi_v = (s * world.size / fps for s in world.speed)
  t = np.arange(tracks.shape[1], dtype=np.float64)
  costs = np.zeros((tracks.shape[0], 4))
  speeds = np.zeros((tracks.shape[0], 4))
  for k, name in enumerate(DIRECTION_NAMES):
    dx, dy = digits.DIRECTIONS[name]
    axis, sign = (0, dx) if dx else (1, dy)
    obs = tracks[:, :, axis].astype(np.float64)  # [N, T]
    other = tracks[:, :, 1 - axis].astype(np.float64)
    perp = ((other - other.mean(1, keepdims=True)) ** 2).sum(1)
    best = np.full(len(obs), np.inf)
    best_s = np.zeros(len(obs))
    # Coarse grid, then a finer one around each clip's best: start point x speed.
    p0 = np.linspace(0.0, hi, 61)
    sp = np.linspace(0.5 * lo_v, 1.5 * hi_v, 31)
    for refine in range(2):
      if refine == 0:
        grid_p, grid_s = np.meshgrid(p0, sp, indexing='ij')
        traj = _reflect(grid_p.reshape(-1, 1) + sign * grid_s.reshape(-1, 1) * t, hi)  # [G, T]
        res = obs[:, None, :] - traj[None]
        res = res - res.mean(-1, keepdims=True)  # the free centroid offset
        sse = (res**2).sum(-1) + _first_step_bounce(  # [N, G]
          grid_p.reshape(-1), sign, grid_s.reshape(-1), hi
        )
        arg = sse.argmin(1)
        best = sse[np.arange(len(obs)), arg]
        bp, bs = grid_p.reshape(-1)[arg], grid_s.reshape(-1)[arg]
      else:
        dp, ds = p0[1] - p0[0], sp[1] - sp[0]
        fine = np.linspace(-1, 1, 11)
        gp = np.clip(bp[:, None, None] + dp * fine[:, None], 0, hi)
        gs = np.maximum(bs[:, None, None] + ds * fine[None, :], 1e-3)
        traj = _reflect(gp[..., None] + sign * gs[..., None] * t, hi)  # [N, 11, 11, T]
        res = obs[:, None, None, :] - traj
        res = res - res.mean(-1, keepdims=True)
        sse = (res**2).sum(-1) + _first_step_bounce(gp, sign, gs, hi)
        sse = sse.reshape(len(obs), -1)
        arg = sse.argmin(1)
        best = sse[np.arange(len(obs)), arg]  # the fine grid contains the coarse optimum
        gs = np.broadcast_to(gs, (len(obs), len(fine), len(fine)))
        best_s = gs.reshape(len(obs), -1)[np.arange(len(obs)), arg]
    costs[:, k] = best + perp
    speeds[:, k] = best_s
  win = costs.argmin(1)
  vel = np.zeros((len(tracks), 2))
  for k, name in enumerate(DIRECTION_NAMES):
    sel = win == k
    vel[sel] = np.asarray(digits.DIRECTIONS[name], np.float64) * speeds[sel, k][:, None]
  return costs, vel


def _monotone_fit(tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """World v2's :func:`direction_fit`: straight motion at a free speed ``s >= 0``."""
  n, frames = tracks.shape[:2]
  t = np.arange(frames, dtype=np.float64)
  t = t - t.mean()
  tt = max(float((t**2).sum()), 1e-12)  # one frame: no slope, every direction ties
  centred = tracks.astype(np.float64) - tracks.mean(1, keepdims=True)  # [N, T, 2]
  sse = (centred**2).sum(1)  # [N, 2]: squared deviation about the mean, per axis
  slope = (centred * t[:, None]).sum(1) / tt  # [N, 2]: least-squares pixels per frame
  costs = np.zeros((n, 4))
  speeds = np.zeros((n, 4))
  for k, name in enumerate(DIRECTION_NAMES):
    dx, dy = digits.DIRECTIONS[name]
    axis, sign = (0, dx) if dx else (1, dy)
    s = np.maximum(sign * slope[:, axis], 0.0)
    # Residual of the best line with slope sign * s: what the slope leaves unexplained.
    costs[:, k] = sse[:, axis] - s**2 * tt + sse[:, 1 - axis]
    speeds[:, k] = s
  costs = np.maximum(costs, 0.0)  # rounding on near-perfect lines
  win = costs.argmin(1)
  vel = np.asarray([digits.DIRECTIONS[m] for m in DIRECTION_NAMES], np.float64)[win]
  return costs, vel * speeds[np.arange(n), win][:, None]


# ----------------------------------------------------------------------------- the judge


class Judge:
  """A trained judge: ``predict`` reads videos, ``features`` embeds them for the FD.

  Args:
    config: the JudgeConfig it was trained with.
    params: the JudgeNet parameters (a nested dict of arrays).
    report: what was measured when it was trained (accuracies), kept in judge.json.
  """

  def __init__(
    self, config: JudgeConfig, params: Mapping[str, Any], report: Mapping[str, Any] | None = None
  ):
    import jax

    self.config, self.params, self.report = config, params, dict(report or {})
    net = _net(config)
    self._apply = jax.jit(lambda p, x: net.apply({'params': p}, x))

  def for_world(self, version: int) -> 'Judge':
    """This judge reading Moving Digits world ``version`` (1: bouncing, 2: straight
    motion): the same network (digit and colour are learnt from still images, the same
    in every version) with that version's direction fit."""
    if version not in digits.WORLD_VERSIONS.values():
      raise ValueError(f'no Moving Digits world v{version}; there are v1 and v2')
    bounce = version == 1
    if bounce == self.config.bounce:
      return self
    return Judge(dataclasses.replace(self.config, bounce=bounce), self.params)

  # -- input

  def _prepare(self, videos) -> np.ndarray:
    """uint8 or [0, 1] float clips ``[N, T, H, W, 3]`` -> float32 at the judge's size."""
    v = np.asarray(videos)
    if v.ndim != 5 or v.shape[-1] != 3:
      raise ValueError(f'videos must be [N, T, H, W, 3]; got shape {v.shape}')
    v = v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v.astype(np.float32)
    n, t, h, w, _ = v.shape
    s = self.config.size
    if (h, w) != (s, s):
      import jax

      v = np.asarray(jax.image.resize(v, (n, t, s, s, 3), 'bilinear', antialias=True))
    return np.clip(v, 0.0, 1.0)

  def _frames(self, v: np.ndarray, batch_frames: int = 2048):
    """CNN outputs for every frame of float clips, reshaped back to [N, T, ...]."""
    n, t = v.shape[:2]
    flat = crop_frames(v.reshape(n * t, *v.shape[2:]), self.config.crop)
    outs = [
      self._apply(self.params, flat[i : i + batch_frames])
      for i in range(0, len(flat), batch_frames)
    ]
    return [np.concatenate([np.asarray(o[k]) for o in outs]).reshape(n, t, -1) for k in range(3)]

  # -- output

  def predict(self, videos, fps: float | None = None, batch: int = 128) -> Predictions:
    """Digit, colour and direction of each clip (``fps``: the clips' frame rate).

    ``videos``: uint8 (or [0, 1] float) ``[N, T, H, W, 3]``, or a list of equal-shape
    clips; read ``batch`` clips at a time, so memory stays bounded for big sets.
    """
    d_lp, c_lp, m_lp = [], [], []
    for i in range(0, len(videos), batch):
      v = self._prepare(videos[i : i + batch])
      _, d_logits, c_logits = self._frames(v)
      d_lp.append(_log_softmax(d_logits).mean(1))  # a product of per-frame experts
      c_lp.append(_log_softmax(c_logits).mean(1))
      costs, _ = direction_fit(centroids(v), self.config, fps or self.config.fps)
      # Costs are squared pixel errors; a temperature of 1 px^2 gives rough probabilities.
      m_lp.append(-(costs - costs.min(1, keepdims=True)))
    d_lp, c_lp, m_lp = (np.concatenate(x) for x in (d_lp, c_lp, m_lp))
    return Predictions(
      digit=d_lp.argmax(1),
      colour=[COLOUR_NAMES[i] for i in c_lp.argmax(1)],
      direction=[DIRECTION_NAMES[i] for i in m_lp.argmax(1)],
      digit_probs=_softmax(d_lp),
      colour_probs=_softmax(c_lp),
      direction_probs=_softmax(m_lp),
    )

  def speed(self, videos) -> np.ndarray:
    """``[N]``: how far the digit moves per frame, in pixels of the judge's frame size
    (the median step of its centre track, robust to a frame where it is lost)."""
    c = centroids(self._prepare(videos))  # [N, T, 2]
    return np.median(np.linalg.norm(np.diff(c, axis=1), axis=-1), axis=1)

  def displacement(self, videos) -> np.ndarray:
    """``[N]``: how far the digit's centre is from where it began at the last frame, in
    pixels of the judge's frame size (zero for a digit held still)."""
    c = centroids(self._prepare(videos))  # [N, T, 2]
    return np.linalg.norm(c[:, -1] - c[:, 0], axis=-1)

  def features(self, videos, fps: float | None = None, batch: int = 128) -> np.ndarray:
    """``[N, embed + 2]``: penultimate layer averaged over frames, then start velocity."""
    out = []
    for i in range(0, len(videos), batch):
      v = self._prepare(videos[i : i + batch])
      emb, _, _ = self._frames(v)
      _, vel = direction_fit(centroids(v), self.config, fps or self.config.fps)
      out.append(np.concatenate([emb.mean(1), vel], axis=1))
    return np.concatenate(out).astype(np.float64)

  # -- files

  def save(self, directory: str) -> str:
    """Writes ``params.safetensors`` and ``judge.json`` (config + report)."""
    os.makedirs(directory, exist_ok=True)
    params_io.save_params(os.path.join(directory, PARAMS_FILE), self.params)
    meta = {'format': FORMAT, 'config': dataclasses.asdict(self.config), 'report': self.report}
    with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
      json.dump(meta, f, indent=2, sort_keys=True)
      f.write('\n')
    return directory


def load_judge(directory: str | None = None) -> Judge:
  """The judge stored in ``directory`` (default: the shipped judge, wherever
  ``imagen_video_jax.pretrained_dir('judge')`` finds it: the installed package or a checkout)."""
  if directory is None:
    from imagen_video_jax.shipped import pretrained_dir

    directory = pretrained_dir('judge')
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, PARAMS_FILE)):
    raise FileNotFoundError(
      f'{directory} holds no judge ({CONFIG_FILE} + {PARAMS_FILE}); train one with '
      '`python -m imagen_video_jax.evaluate --mode=train_judge`'
    )
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT:
    raise ValueError(f'{path} has format {meta.get("format")!r}; this version reads {FORMAT!r}')
  params = params_io.load_params(os.path.join(directory, PARAMS_FILE))
  # A judge.json written before JudgeConfig.bounce existed judged the bouncing world v1
  # (the only world then): it keeps reading direction that way.
  config = {'bounce': True, **meta['config']}
  return Judge(JudgeConfig(**config), params, meta.get('report'))


# ----------------------------------------------------------------------------- training


def train_judge(
  config: JudgeConfig = JudgeConfig(), *, num_frames: int = 20_000, progress: bool = True
) -> Judge:
  """Trains the digit/colour CNN on the judge's own degraded Moving Digits frames."""
  import jax
  import jax.numpy as jnp
  import optax
  from tqdm.auto import tqdm

  if num_frames < 1:
    raise ValueError(f'num_frames must be >= 1; got {num_frames}')
  frames, d_lab, c_lab = _training_frames(config, num_frames)
  net = _net(config)
  shape = (1, config.crop, config.crop, 3)
  params = net.init(jax.random.key(config.seed), jnp.zeros(shape))['params']
  # 100 warmup steps, fewer for a short run: optax needs decay steps beyond the warmup.
  warmup = min(100, config.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, config.steps)
  opt = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = opt.init(params)

  def loss_fn(p, x, d, c):
    _, dl, cl = net.apply({'params': p}, x)
    loss_d = optax.softmax_cross_entropy_with_integer_labels(dl, d).mean()
    loss_c = optax.softmax_cross_entropy_with_integer_labels(cl, c).mean()
    return loss_d + loss_c, (loss_d, loss_c)

  @jax.jit
  def step(p, s, x, d, c):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, d, c)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(config.seed)
  bar = tqdm(range(config.steps), desc='judge', disable=not progress)
  for i in bar:
    idx = rng.integers(0, num_frames, config.batch_size)
    x = crop_frames(augment(frames[idx].astype(np.float32) / 255.0, rng, config), config.crop)
    params, opt_state, loss = step(
      params, opt_state, jnp.asarray(x), jnp.asarray(d_lab[idx]), jnp.asarray(c_lab[idx])
    )
    if i % 50 == 0:
      bar.set_postfix(loss=f'{float(loss):.3f}')
  return Judge(config, jax.device_get(params))


def real_clips(
  config: JudgeConfig, num: int, seed: int, held_out: bool, degrade: bool = False
) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
  """``num`` Moving Digits clips (uint8) and their true (digit, colour, direction)."""
  world = config.world
  make = digits.make_eval_video if held_out else digits.make_video
  exs = [make(world, seed, i) for i in range(num)]
  videos = np.stack([e.video for e in exs])
  truth = [(e.meta['digit'], e.meta['colour'], e.meta['direction']) for e in exs]
  if degrade:
    rng = np.random.default_rng([seed, 1])
    flat = videos.reshape(-1, *videos.shape[2:]).astype(np.float32) / 255.0
    flat = augment(flat, rng, config, per_clip=videos.shape[1])
    videos = np.round(flat * 255).astype(np.uint8).reshape(videos.shape)
  return videos, truth


def accuracy(
  judge: Judge, num: int = 500, seed: int = 12_345, degrade: bool = False
) -> dict[str, dict[str, float]]:
  """Per-attribute accuracy on fresh clips of training and held-out combinations."""
  out = {}
  for group, held in (('train_combinations', False), ('held_out_combinations', True)):
    videos, truth = real_clips(judge.config, num, seed, held, degrade)
    pred = judge.predict(videos).as_tuples()
    out[group] = {
      name: float(np.mean([p[k] == t[k] for p, t in zip(pred, truth)]))
      for k, name in enumerate(('digit', 'colour', 'direction'))
    }
    out[group]['all'] = float(np.mean([p == t for p, t in zip(pred, truth)]))
    out[group]['num'] = num
  return out


# ----------------------------------------------------------------------------- helpers


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
  return np.exp(_log_softmax(x))
