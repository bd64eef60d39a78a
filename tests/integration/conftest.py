import socket
import threading
import time

import pytest
import yaml

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackServer:
    """A uvicorn server for an ASGI app on 127.0.0.1, in a thread of this process."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serving_settings(tmp_path, tiny_model_dir, data_dir, tracking_uri):
    from flywheel.config import load_settings

    data = yaml.safe_load((REPO / "flywheel.yaml").read_text())
    data.update(home=str(tmp_path / "state"), base_model=str(tiny_model_dir), data_dir=str(data_dir), tracking_uri=tracking_uri)
    data["serving"] = {"admin_token": "s3cret", "capture_flush_records": 50, "capture_flush_seconds": 0.5, "max_batch": 16}
    return _load(tmp_path, data)


def _load(tmp_path, data):
    from flywheel.config import load_settings

    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)
