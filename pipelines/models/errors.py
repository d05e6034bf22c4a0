"""The loader's error, importable without torch or open_clip (a command that only reports it
starts in a fraction of a second)."""


class ModelLoadError(RuntimeError):
    pass
