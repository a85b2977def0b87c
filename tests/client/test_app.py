"""The ClientApp answers ``describe`` without torch and registers the phases when first asked.

This module imports neither torch nor MONAI: its helpers also run in a bare subprocess.
"""

import subprocess
import sys
import time

import pytest
from flwr.app import Context, Message, Metadata, RecordDict


def message(message_type: str) -> Message:
    """A message as a SuperNode hands it to the ClientApp."""
    meta = Metadata(1, "m", 0, 1, "", "", time.time(), 60.0, message_type)
    return Message(RecordDict(), metadata=meta)


def context(data_dir: str) -> Context:
    """A deployed node's context: its site's name and data folder."""
    node = {"site": "hospA", "data-dir": data_dir}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


def describe_in_a_bare_process(data_dir: str) -> None:
    """What a fresh ClientApp process does for a describe; fails if torch or MONAI came in."""
    from client.app import app

    reply = app(message("query.describe"), context(data_dir))
    assert reply.content["site"]["name"] == "hospA", reply.content
    assert "torch" not in sys.modules and "monai" not in sys.modules, "describe imported torch"


def test_describe_imports_neither_torch_nor_monai(tiny_sites):
    data = str(tiny_sites["hospA"].dataset.root.parent)
    code = f"from tests.client.test_app import describe_in_a_bare_process as d; d({data!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_phase_message_reaches_its_phase_handler(tmp_path):
    from client.app import SiteFailure, app

    with pytest.raises(SiteFailure, match="KeyError: 'config'"):  # base's handler: no config
        app(message("train.base"), context(str(tmp_path)))
    with pytest.raises(ValueError, match="No train function registered with name 'nothing'"):
        app(message("train.nothing"), context(str(tmp_path)))


def test_an_error_reaches_the_server_without_the_site_s_paths():
    from client.app import SiteFailure, redact, reporting

    text = "cannot read /data/hospA/Dataset001_abdomen/imagesTr/hospA_003_0000.nii.gz: truncated"
    assert redact(text) == "cannot read <path>: truncated"
    assert redact(r"C:\data\x.nii.gz missing; 3/4 cases") == "<path> missing; 3/4 cases"

    def failing(msg, ctx):
        raise FileNotFoundError("/data/hospA/labelsTr/hospA_003.nii.gz: no such file")

    with pytest.raises(SiteFailure) as raised:
        reporting(failing)(message("train.teacher"), context("/data/hospA"))
    assert str(raised.value) == "FileNotFoundError: <path>: no such file"
    assert raised.value.__cause__ is None  # the original, with its paths, stays at the site
