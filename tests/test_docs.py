"""The documentation stays in step with the code it describes."""

import dataclasses
import re
from pathlib import Path

from farense_core import config as C
from farense_core import protocol as P

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_doc_names_every_record_and_field():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", doc, re.M)}
    for kind, cls in {**P.EVENTS, **P.COMMANDS}.items():
        assert kind in rows, f"docs/protocol.md does not document {kind}"
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in rows[kind], f"docs/protocol.md: {kind} lacks field {f.name}"
    assert f"(version {P.PROTOCOL_VERSION})" in doc


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    for s in C.SETTINGS:
        assert f"`{s.key}`" in readme, f"README does not document {s.key}"
