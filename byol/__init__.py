"""byol: the BYOL library behind byolctl - config, models, data, training, checkpoints."""

__version__ = "0.1.0"
