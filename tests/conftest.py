import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A float32 tiny llama folder (built once per test session)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_quantized_model(tmp_path_factory):
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tinyq") / "model", quantized=True)


@pytest.fixture
def tiny_data(tmp_path):
    from tiny_model import write_chat_data

    return write_chat_data(tmp_path / "data")
