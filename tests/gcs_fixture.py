"""A real GCS JSON API on 127.0.0.1 for the tests: the `gcp-storage-emulator` package, one per session.

`gcs_emulator` (session scope) starts ``gcp-storage-emulator start --port P -H 127.0.0.1
--default-bucket test-bucket -q -M`` on a free port, waits until it answers, points every client at
it through the environment (no credentials, no network) and stops it at the end:

- google-cloud-storage and gcsfs: ``STORAGE_EMULATOR_HOST``; ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
  (else gcsfs first tries a gRPC bucket-type lookup and waits 60 s);
- tensorstore (orbax checkpoints): ``TENSORSTORE_GCS_HTTP_URL``, ``TENSORSTORE_GCS_HTTP_VERSION=1``,
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING``.

The emulator is started through this file (``python tests/gcs_fixture.py start ...``), which adds one
thing real GCS does and the emulator does not: the ``x-goog-generation`` / ``x-goog-metageneration``
headers on media downloads. tensorstore reads an object's generation from that header and uses it as
the precondition of its next write (orbax's OCDBT manifest is read, then written "if generation
matches"); without it every orbax save fails with "Malformed StorageGeneration".
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "test-bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, url: str, env: dict[str, str]):
        self.url, self.env = url, env

    def client(self):
        """A google-cloud-storage client of the emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url})

    def list(self, prefix: str) -> list[str]:
        """Names of the objects under gs://test-bucket/<prefix> (uncached, straight from the server)."""
        return sorted(b.name for b in self.client().list_blobs(BUCKET, prefix=prefix))


@pytest.fixture(scope="session")
def gcs_emulator():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "start", "--port", str(port), "-H", "127.0.0.1",
                             "--default-bucket", BUCKET, "-q", "-M"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"gcp-storage-emulator did not start on {url}: {proc.communicate()[1][-2000:]}")
            time.sleep(0.1)
    env = {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "TENSORSTORE_GCS_HTTP_URL": url, "TENSORSTORE_GCS_HTTP_VERSION": "1",
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield Emulator(url, env)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serve() -> None:
    """`gcp-storage-emulator` with generation headers on downloads (see the module docstring)."""
    from gcp_storage_emulator import __main__ as emulator_main
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    plain_download = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
        except Exception:  # noqa: BLE001 - a missing object: the plain handler answers 404
            pass
        return plain_download(request, response, storage, *args, **kwargs)

    objects.download = download  # objects.get(alt=media) calls it by this name
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            if handler is plain_download:
                methods[method] = download
    sys.exit(emulator_main.main())


if __name__ == "__main__":
    _serve()
