"""`python -m imagen_video_jax.plan`: the command in `imagen_video_jax.cli.plan`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.plan', run_name='__main__', alter_sys=True)
