"""The SDK as a consumer gets it: clients/python built into a wheel, installed into a
fresh virtualenv (with its dependencies, as pinned for this repository), imported, its
`securenow-cad` command run, and a consumer's code type-checked against the installed
package with mypy --strict (the .pyi stubs of securenow.v1 count only with py.typed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

CONSUMER = """\
from securenow.client import SecureNowClient
from securenow.v1 import common_pb2, sos_pb2


async def raise_one(client: SecureNowClient) -> str:
    alert: sos_pb2.SosAlert = await client.raise_sos(location=(37.77, -122.42), description="help")
    reveal_type(alert)
    active: bool = alert.status == common_pb2.SOS_STATUS_ACTIVE
    return alert.id if active else ""
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, f"{args} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_the_built_wheel_installs_runs_and_is_typed(tmp_path: Path) -> None:
    # Built from a copy: nothing is written into the working tree.
    source = tmp_path / "securenow-client"
    shutil.copytree(ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    run(VENV_BIN / "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("securenow_client-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    constraints = ROOT / "requirements" / "constraints.txt"
    install = ["install", "-q", "--disable-pip-version-check", "-c", constraints, wheel, "types-protobuf"]
    run(VENV_BIN / "pip", "--python", python, *install)

    where = run(python, "-c", "import securenow.client, securenow.v1.sos_pb2 as m; print(m.__file__)").strip()
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    assert (Path(where).parent / "py.typed").is_file()
    usage = run(venv / "bin" / "securenow-cad", "--help")
    assert "--api-key-file" in usage

    # Outside the repository, so mypy reads no project config and finds only the venv's packages.
    (tmp_path / "consumer.py").write_text(CONSUMER)
    checked = run(
        VENV_BIN / "mypy", "--strict", "--no-incremental", "--python-executable", python, "consumer.py", cwd=tmp_path
    )
    assert 'Revealed type is "securenow.v1.sos_pb2.SosAlert"' in checked, checked
