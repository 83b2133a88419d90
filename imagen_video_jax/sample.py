"""`python -m imagen_video_jax.sample`: the command in `imagen_video_jax.cli.sample`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.sample', run_name='__main__', alter_sys=True)
