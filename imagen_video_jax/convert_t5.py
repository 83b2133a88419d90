"""`python -m imagen_video_jax.convert_t5`: the command in `imagen_video_jax.cli.convert_t5`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.convert_t5', run_name='__main__', alter_sys=True)
