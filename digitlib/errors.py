"""One base class, so the CLI can turn any expected failure into one clear line."""


class DigitlibError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


class DataError(DigitlibError):
    """MNIST files are missing, truncated or corrupt."""


class CheckpointError(DigitlibError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


class ImageError(DigitlibError):
    """An input image cannot be read or holds no digit."""


class TrainingError(DigitlibError):
    """Training cannot go on: bad settings, or the loss stopped being a number."""
