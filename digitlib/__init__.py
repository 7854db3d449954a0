"""digitlib: the library behind the digits course (handwritten digits on MNIST with PyTorch).

The notebooks teach each piece, then import it from here::

    import digitlib as dl
    splits = dl.data.load_splits()
"""

from . import bench, checkpoints, data, drawing, evaluation, models, plots, preprocess, training
from .config import data_dir, figures_dir, models_dir, smoke_test
from .errors import CheckpointError, DataError, DigitlibError, ImageError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "DataError", "DigitlibError", "ImageError",
    "bench", "checkpoints", "data", "data_dir", "drawing", "evaluation", "figures_dir", "models", "models_dir", "plots", "preprocess",
    "smoke_test", "training",
]
