"""`python -m imagen_video_jax.distill`: the command in `imagen_video_jax.cli.distill`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.distill', run_name='__main__', alter_sys=True)
