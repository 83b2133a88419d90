"""`python -m imagen_video_jax.export_cascade`: the command in `imagen_video_jax.cli.export_cascade`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.export_cascade', run_name='__main__', alter_sys=True)
