"""`python -m imagen_video_jax.import_videos`: the command in `imagen_video_jax.cli.import_videos`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.import_videos', run_name='__main__', alter_sys=True)
