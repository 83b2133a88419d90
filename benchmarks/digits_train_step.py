r"""Times the digits train job's own step: `make_train_step`, its data pipeline, its T5.

    .venv/bin/python benchmarks/digits_train_step.py [--stage=base] [--batch=32] [--steps=4]

Makes a small Moving Digits world in a temporary folder (the step's cost does not depend
on its size), compiles the step as `train` does (one device), then times --steps steps
on fresh batches. Prints the batch time of the pipeline, the compile time, each step's
time and XLA's FLOP count of the step.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import digits  # noqa: E402
from imagen_video_jax import parallel  # noqa: E402
from imagen_video_jax.data import prepare  # noqa: E402
from imagen_video_jax.models import unet as unet_lib  # noqa: E402
from imagen_video_jax.training import loop, state as state_lib, step as step_lib  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--stage', default='base', choices=['base', 'tsr', 'ssr'])
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--steps', type=int, default=4)
  args = ap.parse_args()
  c = digits.get_config(f'stage={args.stage}')
  c.data.batch_size = args.batch
  c.data.num_videos = c.data.num_images = 256
  workdir = tempfile.mkdtemp(prefix='ivj_step_')
  data_dir = prepare.prepare_digits(c, os.path.join(workdir, 'run'))
  stage = loop.validate(c)
  model_cfg, spec = stage.unet, stage.spec
  mesh, rules, batch_sharding = loop.make_mesh(c.mesh)
  tok, emb, t5_model, t5_params = loop.make_text(c, data_dir, mesh)
  data = iter(loop.make_data(c, spec, data_dir, tok, emb))
  t = time.perf_counter()
  batches = [next(data) for _ in range(args.steps + 1)]
  print(f'data: {(time.perf_counter() - t) / len(batches):.3f} s per batch')
  tx, schedule = state_lib.make_optimizer(c.optim)
  boxed = unet_lib.init_fn(
    model_cfg,
    frames=spec.frames,
    height=spec.height,
    width=spec.width,
    text_len=int(c.text.max_length),
  )
  _, shardings = state_lib.state_shardings(boxed, tx, mesh, rules)
  state = state_lib.make_init_fn(boxed, tx, shardings)(jax.random.key(0))
  with parallel.mesh_context(mesh, rules, constrain_activations=False):
    fn = jax.jit(
      step_lib.make_train_step(
        c, unet_lib.VideoUNet(model_cfg), t5_model, tx, schedule, jax.random.key(1)
      ),
      donate_argnums=0,
    )
    t = time.perf_counter()
    compiled = fn.lower(state, loop._place(batches[0], batch_sharding), t5_params).compile()
    print(f'compile: {time.perf_counter() - t:.1f} s')
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(f'XLA flops per step: {cost.get("flops", 0) / 1e9:.1f} G')
    state, m = compiled(state, loop._place(batches[0], batch_sharding), t5_params)
    jax.block_until_ready(m)  # warm-up
    for b in batches[1:]:
      t = time.perf_counter()
      state, m = compiled(state, loop._place(b, batch_sharding), t5_params)
      jax.block_until_ready(m)
      print(f'step ({args.stage}, batch {args.batch}): {time.perf_counter() - t:.2f} s')


if __name__ == '__main__':
  main()
