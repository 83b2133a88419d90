"""The jitted training step, and the sampler of the sample videos training writes.

One step: text (T5 on the batch's tokens, or cached `text_emb`) -> classifier-free
guidance dropout -> SR noise-conditioning augmentation -> diffusion loss and grads ->
AdamW -> a non-finite guard (loss, gradients and the update) -> EMA.
Its key is `fold_in(train_key, state.step)`, so a resumed run draws exactly what an
uninterrupted one would.

Joint image-video batches: a row's `frame_ids` say which frames form one clip. Caption
dropout and the diffusion time are drawn per clip (a video row: one draw for the row;
a row packed with T images: one per image), so each packed image gets its own noise
level (`per_frame_time`) while a video shares one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from imagen_video_jax import sampling
from imagen_video_jax import stage as stage_lib
from imagen_video_jax.diffusion import distill, frame_cond, objectives
from imagen_video_jax.models import t5 as t5_lib
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.stage import Stage
from imagen_video_jax.training import state as state_lib
from imagen_video_jax.training.state import TrainState, ema_update


def per_clip(u_BT: jax.Array, frame_ids: jax.Array) -> jax.Array:
  """Gives every frame the draw of its clip: frame ids index the row's draws."""
  idx = jnp.clip(frame_ids, 0, u_BT.shape[1] - 1)
  return jnp.take_along_axis(u_BT, idx, axis=1)


def encode_text(batch: dict, t5_model, t5_params) -> tuple[jax.Array, jax.Array]:
  """Per-frame text [B, T, L, D] and mask [B, T, L] from tokens (frozen T5) or cache."""
  mask = batch['text_mask'].astype(bool)
  if 'text_emb' in batch:
    emb = batch['text_emb'].astype(jnp.float32)
  else:
    b, t, l = batch['tokens'].shape
    emb = t5_model.apply(
      {'params': t5_params}, batch['tokens'].reshape(b * t, l), mask.reshape(b * t, l)
    )
    emb = jax.lax.stop_gradient(emb.astype(jnp.float32)).reshape(b, t, l, -1)
  # where, not multiply: an all-masked caption's T5 output is garbage, maybe non-finite.
  return jnp.where(mask[..., None], emb, 0.0), mask


def distill_config(config):
  """(phase, diffusion.distill.DistillConfig) of `config.distill`; phase '' (or no
  section: a run saved before distillation existed) is plain training."""
  d = config.get('distill') or {}
  phase = str(d.get('phase', '') or '')
  if not phase:
    return '', None
  return phase, distill.DistillConfig(
    w_min=float(d['w_min']),
    w_max=float(d['w_max']),
    student_steps=int(d['student_steps']),
    clip=str(config.sample.get('clip', 'static')),
  )


def _reads(unet_cfg: unet_lib.UNetConfig, name: str) -> bool:
  """Whether a U-Net of this config takes the input `name` (a teacher may not)."""
  return unet_cfg.fps_embed if name == 'fps' else unet_cfg.frame_cond


def _select(tree, mask):
  """The leaves of `tree` where `mask` (a pytree of bools) is True; all if mask is None."""
  if mask is None:
    return tree
  return [x for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask)) if m]


def make_train_step(
  config,
  model: unet_lib.VideoUNet,
  t5_model: t5_lib.T5Encoder | None,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  train_key: jax.Array,
  teacher_model: unet_lib.VideoUNet | None = None,
):
  """step(state, batch, t5_params[, teacher_params]) -> (state, metrics); jit it (see
  loop.py). With `config.distill.phase` set, the loss is that distillation phase's
  (`diffusion/distill.py`) against `teacher_model` at `teacher_params`."""
  dcfg = stage_lib.diffusion_from_config(config.diffusion)
  d = config.diffusion
  is_sr = bool(config.model.cond_channels)
  per_frame_time = bool(d.per_frame_time)
  ema_decay = float(config.optim.ema_decay)
  # A warm start's EMA begins as trained weights, not a random init: no EMA warm-up.
  # (From the config alone, so a resumed run decides the same way.)
  warm_started = bool(str(config.get('init_from', '') or ''))
  ema_warmup = not warm_started
  # An image U-Net inflated into this video U-Net: only the fresh temporal layers warm up.
  inflated = warm_started and bool(config.get('init_inflate', False))
  trainable = str(config.optim.get('trainable', 'all'))
  phase, distill_cfg = distill_config(config)
  # Frame conditioning (`diffusion/frame_cond.py`): rows train with given frames.
  given_cfg = None
  if config.model.get('frame_cond', False):
    given_cfg = frame_cond.FrameCondConfig.from_config(config.frame_cond)
  if phase and teacher_model is None:
    raise ValueError(f'distill.phase={phase!r}: pass the teacher_model')

  def step(state: TrainState, batch: dict, t5_params: Any, teacher_params: Any = None):
    key = jax.random.fold_in(train_key, state.step)
    k_drop, k_t, k_loss, k_aug_t, k_aug, k_dropout = jax.random.split(key, 6)
    x, fids = batch['video'], batch['frame_ids']
    b, t = x.shape[:2]

    text_emb = text_mask = None
    if config.model.text_dim is not None:
      text_emb, text_mask = encode_text(batch, t5_model, t5_params)
      if not phase:  # a distilled student learns the guided output of the real caption
        keep = per_clip(jax.random.uniform(k_drop, (b, t)), fids) >= dcfg.p_uncond
        text_mask = text_mask & keep[..., None]
        text_emb = jnp.where(text_mask[..., None], text_emb, 0.0)

    if per_frame_time:
      t_draw = per_clip(jax.random.uniform(k_t, (b, t)), fids)
    else:
      t_draw = jax.random.uniform(k_t, (b,))

    cond = cond_logsnr = None
    if is_sr:
      cond_logsnr = objectives.sample_augment_logsnr(
        k_aug_t, b, dcfg.schedule, float(d.cond_augment_max_t)
      )
      cond = objectives.noise_augment(k_aug, batch['cond'], cond_logsnr)

    known = known_frames = None
    if given_cfg is not None:
      # Its own stream (a fold-in, not a seventh split): every other draw stays as it was.
      known = frame_cond.draw_known(jax.random.fold_in(key, 7), fids, given_cfg)
      known_frames = jnp.where(known[:, :, None, None, None], x, 0.0)
    given = dict(known=known, known_frames=known_frames) if given_cfg is not None else {}
    if config.model.get('fps_embed', False):
      given['fps'] = batch['fps']

    def student(params, z, logsnr, **w):
      """The model being trained (with `guidance=w`: a distillation's student)."""
      return model.apply(
        {'params': params},
        z,
        logsnr,
        text_emb,
        text_mask,
        fids,
        cond,
        cond_logsnr,
        train=True,
        rngs={'dropout': k_dropout},
        **given,
        **w,
      )

    def distill_loss(params):
      def teacher(z, logsnr, emb, mask, **w):
        # A frame-conditioned (frame-rate reading) teacher sees the student's given
        # frames (frame rates).
        out = teacher_model.apply(
          {'params': teacher_params},
          z,
          logsnr,
          emb,
          mask,
          fids,
          cond,
          cond_logsnr,
          **{k: v for k, v in given.items() if _reads(teacher_model.config, k)},
          **w,
        )
        return jax.lax.stop_gradient(out)

      reads_w = lambda z, l, w: student(params, z, l, guidance=w)
      common = dict(config=distill_cfg, schedule=dcfg.schedule, frame_mask=fids >= 0)
      if phase == 'guidance':
        null_emb, null_mask = objectives.null_text(text_emb, text_mask)
        return distill.guided_loss(
          reads_w,
          lambda z, l: teacher(z, l, text_emb, text_mask),
          lambda z, l: teacher(z, l, null_emb, null_mask),
          x,
          k_loss,
          **common,
        )
      return distill.halving_loss(
        reads_w,
        lambda z, l, w: teacher(z, l, text_emb, text_mask, guidance=w),
        x,
        k_loss,
        prediction=dcfg.prediction,
        **common,
      )

    def loss_fn(params):
      if phase:
        return distill_loss(params)
      return objectives.diffusion_loss(
        lambda z, logsnr: student(params, z, logsnr),
        x,
        k_loss,
        config=dcfg,
        frame_ids=fids,
        t=t_draw,
        per_frame_time=per_frame_time,
      )

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # optim.trainable: the frozen parameters' gradients are never used (XLA drops them),
    # and the parameters and their EMA are carried over as they are, bit for bit.
    trained = state_lib.trainable_mask(state.params, trainable)
    frozen = None if trained is None else jax.tree.map(lambda t: not t, trained)
    grad_norm = optax.tree.norm(_select(grads, trained))
    applied = state.step - state.nonfinite_total  # updates applied so far
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if frozen is not None:
      params = jax.tree.map(lambda f, n, o: o if f else n, frozen, params, state.params)
    # An inflated run: only the fresh temporal layers' EMA warms up.
    warmup = state_lib.trainable_mask(state.params, 'temporal') if inflated else ema_warmup
    # Finite loss and gradients can still make a non-finite update (an infinite or NaN
    # learning rate): skipped too. A finite update norm (a sum of squares, like grad_norm:
    # the same reduction, so no new cross-device pattern) means finite new weights, and
    # finite gradients whose squares sum finitely mean finite Adam moments.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    ema = ema_update(state.ema_params, params, ema_decay, applied, warmup=warmup, frozen=frozen)
    keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    bad = jnp.logical_not(ok).astype(jnp.int32)
    new_state = TrainState(
      step=state.step + 1,
      params=keep_new(params, state.params),
      ema_params=keep_new(ema, state.ema_params),
      opt_state=keep_new(opt_state, state.opt_state),
      nonfinite_in_a_row=jnp.where(ok, 0, state.nonfinite_in_a_row + 1),
      nonfinite_total=state.nonfinite_total + bad,
    )
    metrics = {
      'loss': loss,
      'grad_norm': grad_norm,
      'lr': schedule(applied),
      'logsnr_mean': aux['logsnr_mean'],
      'nonfinite': bad,
      'nonfinite_in_a_row': new_state.nonfinite_in_a_row,
      'nonfinite_total': new_state.nonfinite_total,
    }
    return new_state, metrics

  return step


def make_sample_fn(stage: Stage, t5_model, n: int):
  """sample(ema_params, batch, t5_params, key) -> videos [n, T, H, W, C] in [-1, 1].

  `sampling.sample_stage` (what the cascade runs) with the stage's default sampler
  (`config.sample`), on the text, frame ids and (SR stages) low-resolution
  conditioning of the first n rows of a training batch, at the batch's clip size: a
  stage trained on crops (`data.crop`) samples crop-sized videos here.
  """

  def sample(params, batch, t5_params, key):
    rows = jax.tree.map(lambda x: x[:n], batch)
    t, h, w = rows['video'].shape[1:4]
    spec = stage.spec
    at_size = stage
    if (t, h, w) != (spec.frames, spec.height, spec.width):
      at_size = dataclasses.replace(
        stage, spec=dataclasses.replace(spec, frames=t, height=h, width=w)
      )
    text_emb = text_mask = None
    if stage.unet.text_dim is not None:
      text_emb, text_mask = encode_text(rows, t5_model, t5_params)
    return sampling.sample_stage(
      at_size,
      params,
      key,
      n,
      text_emb=text_emb,
      text_mask=text_mask,
      cond=rows.get('cond'),
      frame_ids=rows['frame_ids'],
    )

  return sample
