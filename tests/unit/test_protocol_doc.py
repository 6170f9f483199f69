"""docs/protocol.md and pbt_actors/model/protocol.py must describe the same protocol."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pbt_actors.model.protocol import ERROR_CODES, MESSAGE_TYPES, PROTOCOL_VERSION, REPLY_TYPES, REQUEST_TYPES

pytestmark = pytest.mark.timeout(30)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table(header: list[str]) -> list[list[str]]:
    """The rows of the first table in the doc whose header cells are ``header``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and cells(line) == header:
            rows = []
            for row in lines[i + 2:]:  # skip the |---| separator
                if not row.lstrip().startswith("|"):
                    break
                rows.append(cells(row))
            assert rows, f"table {header} is empty"
            return rows
    raise AssertionError(f"no table with header {header} in {DOC}")


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_message_table_matches_code() -> None:
    rows = table(["type", "direction", "body fields", "reply"])
    names = []
    for row in rows:
        found = backticked(row[0])
        assert len(found) == 1, f"type cell must hold one backticked name: {row[0]!r}"
        names.append(found[0])
    assert len(names) == len(set(names)), "a type is listed twice"
    assert set(names) == set(MESSAGE_TYPES)


def test_directions_match_request_and_reply_types() -> None:
    for row in table(["type", "direction", "body fields", "reply"]):
        name = backticked(row[0])[0]
        if name in REQUEST_TYPES:
            assert row[1].endswith("→ controller"), row
        else:
            assert name in REPLY_TYPES
            assert row[1] == "controller → worker", row


def test_reply_column_names_only_reply_types() -> None:
    for row in table(["type", "direction", "body fields", "reply"]):
        for name in backticked(row[3]):
            assert name in REPLY_TYPES, f"{name!r} in the reply column of {row[0]} is not a reply type"


def test_protocol_version_matches_code() -> None:
    found = re.findall(r"^PROTOCOL_VERSION = (\d+)$", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert found == [str(PROTOCOL_VERSION)]


def test_error_codes_match_code() -> None:
    codes = []
    for row in table(["code", "meaning"]):
        found = backticked(row[0])
        assert len(found) == 1, row
        codes.append(found[0])
    assert sorted(codes) == sorted(ERROR_CODES)
