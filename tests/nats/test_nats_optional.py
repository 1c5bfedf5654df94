"""nats-py is an optional extra: klieo_shm imports without it, and the
nats:// backend says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_NATS = textwrap.dedent(
    """
    import sys

    class _NoNats:
        def find_spec(self, name, path=None, target=None):
            if name == "nats" or name.startswith("nats."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoNats())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_NATS + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_klieo_shm_and_its_nats_package_import_without_nats_py():
    done = _run(
        """
        import klieo_shm, klieo_shm.sync, klieo_shm.nats, klieo_shm.nats.testing
        print("ok")
        """
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_connecting_to_nats_without_nats_py_raises_a_clear_import_error():
    done = _run(
        """
        import asyncio, klieo_shm
        try:
            asyncio.run(klieo_shm.connect("nats://127.0.0.1:4222"))
        except ImportError as exc:
            print("ImportError:", exc)
        """
    )

    assert done.returncode == 0, done.stderr
    assert "pip install 'klieo-shm[nats]'" in done.stdout
