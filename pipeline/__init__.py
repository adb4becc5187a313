"""The training pipeline: data, augmentation, strategy, training, checkpoints, evaluation, export."""
