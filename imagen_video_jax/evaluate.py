"""`python -m imagen_video_jax.evaluate`: the command in `imagen_video_jax.cli.evaluate`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.evaluate', run_name='__main__', alter_sys=True)
