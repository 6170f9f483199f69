"""Issue 20 item 2: a ``;`` in ``--bind`` cannot open an unencrypted controller to the network.

ZeroMQ reads ``tcp://SOURCE;ADDRESS`` and binds ADDRESS, while the loopback check read the
text before the ``;``: ``--bind "tcp://127.0.0.1:1;0.0.0.0:PORT"`` passed it and listened on
every interface, without keys. Now the rule judges the address ZeroMQ actually bound (its
``LAST_ENDPOINT``), for ``controller`` and ``run`` (the CLI, real processes), and the endpoint
itself closes a socket whose bound address the check refuses.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pbt_actors.cli.bind_security import bound_check
from pbt_actors.model.errors import ConfigError
from pbt_actors.transport.endpoints import ControllerEndpoint
from tests.faults.harness import free_port
from tests.support.runs import TOY, cli, output_once_exited

pytestmark = pytest.mark.timeout(120)


def refused(proc: subprocess.Popen[str]) -> str:
    out = output_once_exited(proc, 60, "it kept running (it listened on every interface)")
    assert proc.returncode == 2, out
    assert "refusing" in out and "0.0.0.0" in out, out
    assert "Traceback" not in out, out
    return out


@pytest.mark.parametrize("command", ["controller", "run"])
def test_a_source_separator_in_bind_is_judged_by_what_zeromq_binds(tmp_path: Path, command: str) -> None:
    bind = f"tcp://127.0.0.1:1;0.0.0.0:{free_port()}"
    extra = ["--workers", "1", "--devices", "cpu", "--no-zygote"] if command == "run" else []
    refused(cli(command, str(TOY), "--store", str(tmp_path / "store"), "--bind", bind, *extra))


def test_the_endpoint_judges_what_zeromq_bound() -> None:
    with pytest.raises(ConfigError, match="what ZeroMQ bound"):
        ControllerEndpoint("tcp://127.0.0.1:1;0.0.0.0:0", check_bound=bound_check(False, "use CURVE"))
    endpoint = ControllerEndpoint("tcp://127.0.0.1:1;127.0.0.1:0", check_bound=bound_check(False, "use CURVE"))
    assert endpoint.endpoint.startswith("tcp://127.0.0.1:")
    endpoint.close()
