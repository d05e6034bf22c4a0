import pytest


@pytest.fixture(scope="module")
def loaded():
    """A fresh tic-tiny-32 open_clip model per test module, initialised from seed 0."""
    import torch

    from pipelines.models import load_model

    torch.manual_seed(0)
    return load_model("tic-tiny-32")
