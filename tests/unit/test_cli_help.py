"""The CLI's help lists what a user can run, and nothing internal."""

from __future__ import annotations

import pytest

from pbt_actors.cli.main import INTERNAL_COMMANDS, build_parser


@pytest.mark.timeout(30)
def test_top_level_help_hides_internal_commands_but_they_still_parse(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    text = parser.format_help()
    for name in INTERNAL_COMMANDS:
        assert name not in text
    assert "==SUPPRESS==" not in text
    for name in ("run", "controller", "worker", "status", "replay"):
        assert name in text
    args = parser.parse_args(["worker-process", "exp.py", "--connect", "tcp://127.0.0.1:1"])
    assert args.command == "worker-process"
