"""`python -m imagen_video_jax.train`: the command in `imagen_video_jax.cli.train`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.train', run_name='__main__', alter_sys=True)
