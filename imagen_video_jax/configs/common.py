"""What the config files share: parsing get_config's 'key=value,...' argument, and the
sections every stage config has (`run`, `spec`, `diffusion`, `optim`, U-Net `level`s).

The configs are the modules of `imagen_video_jax.configs` (importable wherever the package
is installed); the files in the repository's top-level configs/ are the entry points
absl's --config=FILE loads by path.
"""

import dataclasses

import ml_collections


def parse_arg(arg: str, source: str, **keys) -> dict:
  """`arg` ('stage=base,tiny=True') as a dict over the defaults, checked.

  source: the config file the errors name, e.g. 'configs/digits.py'.
  keys: each key's allowed values, its default first (e.g. stage=STAGES), or a bool
    default for a flag key (tiny=False); a flag is true for 1, true or yes (any case).
  Raises ValueError naming `source` and the allowed values for an unknown key or value.
  """
  usage = ' and '.join(
    f'{k}=True|False' if isinstance(v, bool) else f'{k}=' + '|'.join(v) for k, v in keys.items()
  )
  out = {k: v if isinstance(v, bool) else v[0] for k, v in keys.items()}
  for part in filter(None, (arg or '').split(',')):
    key, _, value = part.partition('=')
    key = key.strip()
    if key not in out:
      raise ValueError(f'{source}: unknown argument {key!r}; use {usage}')
    out[key] = value.strip()
  for key, allowed in keys.items():
    if isinstance(allowed, bool):
      out[key] = str(out[key]).lower() in ('1', 'true', 'yes')
    elif out[key] not in allowed:
      raise ValueError(f'{source}: {key}={out[key]!r}; use one of {", ".join(allowed)}')
  return out


# ------------------------------------------------------------ sections both files share
def level(channels, blocks=1, spatial=False, temporal='conv', cross=False) -> dict:
  """One U-Net level (imagen_video_jax.models.unet.LevelConfig as a dict)."""
  return dict(
    channels=channels,
    num_res_blocks=blocks,
    spatial_attention=spatial,
    temporal=temporal,
    cross_attention=cross,
  )


def run(c, **overrides) -> None:
  """Sets the job's top-level fields on `c`: these defaults, then `overrides`."""
  fields = dict(
    seed=0,
    init_from='',  # a trained stage to start from (training/warm_start.py); '': random
    init_inflate=False,  # init_from may be this U-Net's image version: fresh temporal layers
    num_steps=100_000,
    log_every=100,
    checkpoint_every_steps=2000,
    checkpoint_every_secs=600.0,  # time-based too (0: off)
    keep_checkpoints=3,
    sample_every=5000,  # 0: no sample videos
    max_nonfinite_in_a_row=5,
    stop_after_secs=0.0,  # >0: save and stop after this many seconds (resume: rerun)
    debug_nan_steps=(),  # tests: poison these steps' batches
    debug_sleep_secs=0.0,  # tests: slow each step down
  )
  unknown = set(overrides) - set(fields)
  if unknown:
    raise KeyError(f'run(): unknown fields {sorted(unknown)}')
  for k, v in {**fields, **overrides}.items():
    setattr(c, k, v)


def spec(stage_spec) -> ml_collections.ConfigDict:
  """What one example is: an imagen_video_jax.stage.StageSpec as a config section."""
  return ml_collections.ConfigDict(dataclasses.asdict(stage_spec))


def diffusion(**overrides) -> ml_collections.ConfigDict:
  """The diffusion section: v-prediction on the cosine log-SNR schedule."""
  return ml_collections.ConfigDict(
    dict(
      prediction='v',
      weighting='uniform',
      min_snr_gamma=5.0,
      logsnr_min=-20.0,
      logsnr_max=20.0,
      shift=0.0,
      p_uncond=0.1,  # caption dropout for classifier-free guidance
      per_frame_time=True,  # each packed image its own noise level
      cond_augment_max_t=0.5,  # SR: training draws the conditioning's noise t ~ U(0, max_t)
      sample_cond_t=0.1,  # SR: the fixed level when sampling
      **overrides,
    )
  )


def distill(**overrides) -> ml_collections.ConfigDict:
  """Distillation (diffusion/distill.py); `python -m imagen_video_jax.distill` sets it.

  phase '' is plain training."""
  return ml_collections.ConfigDict(
    dict(
      phase='',  # '' | 'guidance' (fold guidance into the student) | 'halving' (2 steps -> 1)
      teacher='',  # the teacher: an exported cascade or stage, or a training workdir
      w_min=0.0,  # guidance weights are drawn uniformly from [w_min, w_max]
      w_max=5.0,
      student_steps=8,  # halving: the student's DDIM steps (its teacher's: twice as many)
      **overrides,
    )
  )


def frame_cond(**overrides) -> ml_collections.ConfigDict:
  """Given frames in training (diffusion/frame_cond.py), read when model.frame_cond is set."""
  return ml_collections.ConfigDict(
    dict(
      # The fraction of video rows trained with given frames (the rest: text only).
      p=0.5,
      # Which frames are given, drawn uniformly (comma-separated): first, first_k,
      # every_other, ends.
      patterns='first,first_k,every_other,ends',
      # The largest k of first_k (0: half the clip's frames).
      max_known=0,
      **overrides,
    )
  )


def optim(*, lr, warmup_steps, ema_decay, **overrides) -> ml_collections.ConfigDict:
  """AdamW with linear warm-up (then constant, or cosine over decay_steps), EMA weights."""
  return ml_collections.ConfigDict(
    dict(
      lr=lr,
      warmup_steps=warmup_steps,
      decay_steps=0,
      end_lr_fraction=0.1,
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=1.0,
      ema_decay=ema_decay,
      trainable='all',  # 'all' or 'temporal' (only the temporal layers train, the rest frozen)
      **overrides,
    )
  )
