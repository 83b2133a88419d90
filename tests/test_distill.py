"""Distillation on a tiny U-Net: the guided student reads w, and one halving phase makes
one student step do what two teacher steps do.

The teacher is a tiny text-conditioned U-Net with every weight moved by random noise
(a trained network's output is no easier to match, and nothing here is trivially zero).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imagen_video_jax.diffusion import distill, objectives, samplers
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig

B, T, H, W, L = 4, 2, 8, 8, 3


def _cfg(**kw):
  return UNetConfig(
    # Two levels and spatial attention: a receptive field over the whole frame, which two
    # teacher steps have and one student step must match.
    levels=(
      LevelConfig(8, 1, temporal='conv'),
      LevelConfig(16, 1, spatial_attention=True, cross_attention=True, temporal='conv'),
    ),
    text_dim=4,
    emb_dim=16,
    head_dim=8,
    **kw,
  )


def _perturbed(params, key, scale=0.2):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


@pytest.fixture(scope='module')
def teacher():
  """A tiny U-Net trained 300 steps on `_data` (a smooth denoiser, as a real teacher is),
  then every weight moved a little, so that its text matters to its output."""
  model = unet_lib.VideoUNet(_cfg())
  text = jax.random.normal(jax.random.key(1), (B, L, 4))
  mask = jnp.ones((B, L), bool)
  init = model.init(jax.random.key(0), _data(jax.random.key(9)), jnp.zeros((B,)), text, mask)
  x = _data(jax.random.key(7))
  config = objectives.DiffusionConfig()

  def loss_fn(p, key):
    apply = lambda z, l: model.apply({'params': p}, z, l, text, mask)
    return objectives.diffusion_loss(apply, x, key, config=config)

  params, _ = _fit(loss_fn, init['params'], 300)
  return model, _perturbed(params, jax.random.key(2), 0.05), text, mask


def _student(teacher_params, key):
  """A w-reading student initialised from the teacher (its guidance embedding fresh)."""
  model = unet_lib.VideoUNet(_cfg(guidance_embed=True))
  x = jnp.zeros((B, T, H, W, 3))
  text, mask = jnp.zeros((B, L, 4)), jnp.ones((B, L), bool)
  fresh = model.init(key, x, jnp.zeros((B,)), text, mask, guidance=jnp.zeros((B,)))['params']
  return model, {**fresh, **teacher_params}


def _fit(loss_fn, params, steps, lr=3e-3):
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, key):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  for i in range(steps):
    params, opt, loss = step(params, opt, jax.random.key(100 + i))
  return params, float(loss)


def _data(key):
  """Smooth videos in [-1, 1]: a colour per clip plus a ramp, like the world's frames."""
  k1, k2 = jax.random.split(key)
  colour = jax.random.uniform(k1, (B, 1, 1, 1, 3), minval=-1, maxval=1)
  ramp = jnp.linspace(-0.5, 0.5, W)[None, None, None, :, None]
  video = colour + ramp * jax.random.uniform(k2, (B, 1, 1, 1, 1))
  return jnp.clip(jnp.broadcast_to(video, (B, T, H, W, 3)), -1, 1)


def test_a_fresh_student_is_its_teacher_at_every_w(teacher):
  model, params, text, mask = teacher
  s_model, s_params = _student(params, jax.random.key(3))
  z = jax.random.normal(jax.random.key(4), (B, T, H, W, 3))
  logsnr = jnp.linspace(-5.0, 5.0, B)
  want = model.apply({'params': params}, z, logsnr, text, mask)
  for w in (0.0, 1.0, 4.0):
    got = s_model.apply({'params': s_params}, z, logsnr, text, mask, guidance=jnp.full((B,), w))
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match='pass guidance'):
    s_model.apply({'params': s_params}, z, logsnr, text, mask)


def test_the_guided_student_reproduces_cond_and_uncond_and_is_monotone_in_between(teacher):
  """Trained on a fixed set of noisy videos (t and the noise given), for w in [0, 2]:
  at w = 0 and w = 1 it gives the teacher's unconditional and conditional outputs there,
  and along the guidance direction its output grows with w."""
  model, params, text, mask = teacher
  null_emb, null_mask = objectives.null_text(text, mask)
  cond = lambda z, l: model.apply({'params': params}, z, l, text, mask)
  uncond = lambda z, l: model.apply({'params': params}, z, l, null_emb, null_mask)
  s_model, s_init = _student(params, jax.random.key(3))
  config = distill.DistillConfig(w_min=0.0, w_max=2.0)
  x = _data(jax.random.key(5))
  t = jnp.linspace(0.2, 0.8, B)
  eps = jax.random.normal(jax.random.key(6), x.shape)

  def loss_fn(p, key):
    student = lambda z, l, w: s_model.apply({'params': p}, z, l, text, mask, guidance=w)
    return distill.guided_loss(student, cond, uncond, x, key, config=config, t=t, eps=eps)

  s_params, _ = _fit(loss_fn, s_init, 800)
  logsnr = objectives.DiffusionConfig().schedule.logsnr(t)
  z = objectives.noisy(x, eps, logsnr)
  c, u = cond(z, logsnr), uncond(z, logsnr)
  gap = float(jnp.sqrt(jnp.mean(jnp.square(c - u))))

  def student_at(w, p=s_params):
    return s_model.apply({'params': p}, z, logsnr, text, mask, guidance=jnp.full((B,), w))

  err = lambda a, b: float(jnp.sqrt(jnp.mean(jnp.square(a - b))))
  # Fresh, the student is the conditional teacher at every w: at w = 0 it is a whole gap
  # from the unconditional output.
  assert err(student_at(0.0, s_init), u) == pytest.approx(gap, rel=1e-5)
  at0, at1 = student_at(0.0), student_at(1.0)
  print(f'guided: error at w=0 {err(at0, u) / gap:.3f}, at w=1 {err(at1, c) / gap:.3f} of the gap')
  # Measured: 13% and 6% of the gap after 800 steps (fresh: 100% at w = 0).
  assert err(at0, u) < 0.2 * gap and err(at1, c) < 0.2 * gap, (err(at0, u), err(at1, c), gap)
  # Along the guidance direction the output moves monotonically with w.
  d = (c - u).ravel()
  proj = [
    float(jnp.dot(student_at(w).ravel() - u.ravel(), d) / jnp.dot(d, d))
    for w in np.linspace(0, 2, 9)
  ]
  assert all(b > a for a, b in zip(proj, proj[1:])), proj


def test_one_halving_phase_makes_one_student_step_match_two_teacher_steps(teacher):
  model, params, text, mask = teacher
  s_model, s_init = _student(params, jax.random.key(3))
  # The teacher of a halving phase reads w too: here the freshly made student (the
  # conditional teacher at every w), so that teacher and student have the same form.
  t_params = s_init
  config = distill.DistillConfig(w_min=1.0, w_max=1.0, student_steps=1)
  x = _data(jax.random.key(7))

  def apply(p):
    return lambda z, l, w: s_model.apply({'params': p}, z, l, text, mask, guidance=w)

  def loss_fn(p, key):
    return distill.halving_loss(apply(p), apply(t_params), x, key, config=config)

  s_params, _ = _fit(loss_fn, s_init, 600)

  def run(p, steps):
    den = lambda z, l, w: apply(p)(z, l, jnp.full((B,), w))
    cfg = SamplerConfig(steps=steps, guidance=1.0, clip=config.clip)
    return jax.jit(lambda k: samplers.sample(den, (B, T, H, W, 3), k, config=cfg))(
      jax.random.key(8)
    )

  # The sampler from fresh noise: the student's one step against the teacher's two, and
  # the teacher's own one step against its two (measured: 0.4-0.5 after 600 steps).
  teacher_2, teacher_1 = run(t_params, 2), run(t_params, 1)
  student_1 = run(s_params, 1)
  ratio = float(jnp.linalg.norm(student_1 - teacher_2) / jnp.linalg.norm(teacher_1 - teacher_2))
  print(f'halving: |student 1 step - teacher 2| / |teacher 1 - teacher 2| = {ratio:.3f}')
  assert ratio < 0.55, ratio


def test_two_step_target_is_exact_for_a_linear_teacher():
  """With a teacher whose x-prediction is a fixed x0, every DDIM step keeps x0: the
  one-step target is x0 itself, whatever z_t."""
  x0 = jax.random.normal(jax.random.key(0), (2, 1, 2, 2, 3))

  def teacher(z, logsnr, w):  # v such that the x-prediction is x0
    a, s = (v.reshape(-1, 1, 1, 1, 1) for v in objectives.alpha_sigma(logsnr))
    return (a * z - x0) / s

  z = jax.random.normal(jax.random.key(1), x0.shape)
  ls = [jnp.full((2,), v) for v in (-3.0, 0.0, 2.0)]
  got = distill.two_step_target(teacher, z, *ls, jnp.ones((2,)), clip='none')
  np.testing.assert_allclose(got, x0, atol=1e-5)
  with pytest.raises(ValueError):
    dataclasses.replace(distill.DistillConfig(), w_min=2.0, w_max=1.0)


def test_a_guidance_distilled_stage_samples_in_one_forward_of_the_batch(teacher, monkeypatch):
  """`sampling.sample_stage` runs a guidance-embedded stage as one forward of batch B per
  step, the step's weight fed to the network (not cond and uncond at 2B)."""
  from flax import linen as nn

  from imagen_video_jax import sampling
  from imagen_video_jax.stage import Stage, StageSpec

  _, params, text, mask = teacher
  s_model, s_params = _student(params, jax.random.key(3))
  s_params = _perturbed(s_params, jax.random.key(4), 0.05)  # w matters to its output
  stage = Stage(
    name='student',
    spec=StageSpec(frames=T, height=H, width=W),
    unet=s_model.config,
    params=s_params,
    fps=4.0,
    sampler=SamplerConfig(steps=3, guidance=2.0),
  )
  batches, real_apply = [], nn.Module.apply

  def apply(self, variables, z, *args, **kw):
    batches.append((z.shape[0], kw['guidance'].shape))
    return real_apply(self, variables, z, *args, **kw)

  key = jax.random.key(5)
  got = sampling.sample_stage(stage, s_params, key, B, text_emb=text, text_mask=mask)
  monkeypatch.setattr(unet_lib.VideoUNet, 'apply', apply, raising=False)
  sampling.sample_stage(stage, s_params, key, B, text_emb=text, text_mask=mask)
  assert batches == [(B, (B,))], batches  # the loop's body, traced once
  monkeypatch.undo()

  def den(z, logsnr, w):
    g = jnp.full((B,), w)
    return s_model.apply({'params': s_params}, z, logsnr, text, mask, guidance=g)

  _, k_sample = jax.random.split(key)
  want = samplers.sample(den, (B, T, H, W, 3), k_sample, config=stage.sampler)
  np.testing.assert_allclose(got, want, atol=1e-6)
  other = sampling.sample_stage(
    stage, s_params, key, B, text_emb=text, text_mask=mask, sampler=SamplerConfig(steps=3)
  )
  assert float(jnp.abs(other - got).max()) > 1e-3  # the weight reaches the network
  with pytest.raises(ValueError, match='no negative prompt'):
    sampling.sample_stage(
      stage, s_params, key, B, text_emb=text, text_mask=mask, neg_text_emb=text, neg_text_mask=mask
    )
