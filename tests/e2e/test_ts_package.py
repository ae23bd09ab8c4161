"""The TypeScript client is an installable, licensed package: `npm pack` (its prepack builds
it) makes a tarball carrying the repository's licence, which installs into an empty folder
with `npm install ./that.tgz`, type-checks an app against its declared types and exports, and
runs README.md's TypeScript example against a real service, printing what the README shows.

The example is read from README.md (the ```ts block after `<!-- ts-example: node-local-cache`
and the ```text block after it: the output), so the README and this test cannot drift."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.service_process import free_port, service_process
from tests.support.ts_stack import READ_TOKEN, service_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
MARKER = "<!-- ts-example: node-local-cache"


def readme_example() -> tuple[str, str]:
    """(the example's code, the output the README shows for it)."""
    text = (ROOT / "README.md").read_text()
    assert MARKER in text, "README.md lost its TypeScript example's marker"
    after = text[text.index(MARKER) :]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", after, flags=re.S | re.M)
    assert len(blocks) >= 2 and blocks[0][0] == "ts" and blocks[1][0] == "text", blocks[:2]
    return blocks[0][1], blocks[1][1]


def run(command: list[str], cwd: Path, **env: str) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    npm = shutil.which("npm")
    assert npm, "npm is needed (Node ≥ 20)"
    assert (CLIENT / "node_modules").is_dir(), "run `make ts-install`"
    out = tmp_path_factory.mktemp("pack")
    packed = json.loads(run([npm, "pack", "--json", "--pack-destination", str(out)], CLIENT))
    path = out / str(packed[0]["filename"])
    assert path.is_file()
    return path


def test_the_tarball_is_licensed_and_complete(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        licence = tar.extractfile("package/LICENSE")
        assert licence is not None
        assert licence.read() == (ROOT / "LICENSE").read_bytes()
    assert manifest["license"] == "Apache-2.0"
    assert "private" not in manifest
    assert manifest["scripts"]["prepack"]
    for name in ("dist/index.js", "dist/index.d.ts", "dist/node.js", "dist/node.d.ts"):
        assert f"package/{name}" in names, name
    assert not any(n.startswith(("package/test/", "package/build-test/")) for n in names)
    assert not any(n.startswith("package/node_modules/") for n in names)


def test_installed_into_an_empty_folder_the_readme_example_runs(
    tarball: Path, tmp_path: Path, database_url: str
) -> None:
    npm = shutil.which("npm")
    node = shutil.which("node")
    assert npm and node
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "app", "private": True, "type": "module"})
    )
    run([npm, "install", "--no-audit", "--no-fund", "--prefer-offline", str(tarball)], app)
    installed = json.loads(
        (app / "node_modules/@plan-entitlements/client/package.json").read_text()
    )
    assert installed["license"] == "Apache-2.0"

    code, shown = readme_example()
    (app / "example.ts").write_text(code)
    # Compiled against the installed package's declared types and exports (NodeNext), with
    # the repository's pinned compiler; Node 20 does not run TypeScript itself.
    (app / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "ES2022",
                    "module": "NodeNext",
                    "moduleResolution": "NodeNext",
                    "strict": True,
                    "lib": ["ES2022", "DOM"],
                    "typeRoots": [str(CLIENT / "node_modules" / "@types")],
                    "types": ["node"],
                },
                "files": ["example.ts"],
            }
        )
    )
    run([str(CLIENT / "node_modules" / ".bin" / "tsc"), "-p", "."], app)

    port = free_port()
    env = service_env(database_url, free_port())
    with service_process(env, tmp_path / "service.log", port):
        printed = run(
            [node, "example.js"],
            app,
            ENTITLEMENTS_GRPC_URL=f"http://127.0.0.1:{port}",
            ENTITLEMENTS_READ_TOKEN=READ_TOKEN,
        )
    assert printed == shown
