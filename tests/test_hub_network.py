"""The Hub without a network (issue 15): a server that accepts connections and never answers, or nothing listening
at all. Every Hub command finishes with one line (or the answer from the local Hub cache), instead of hanging or
retrying for half a minute."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from sae_vit.cli import app
from sae_vit.io import hub
from tests.conftest import lay_out_hub_cache as lay_out_cache
from tests.test_hub import COMMIT, make_sae, sae_bytes

runner = CliRunner()


@pytest.fixture
def silent_server():
    """A local TCP server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def closed_port():
    """An address where nothing listens (connection refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Network allowed (HF_HUB_OFFLINE unset), a private Hub cache, short timeouts, a fresh reachability answer."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hub, "PROBE_SECONDS", 1.0)
    monkeypatch.setattr(hub, "_REACHABLE", {})

    def use(endpoint):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        return tmp_path / "hf_cache"

    return use


@pytest.mark.parametrize("network", ["silent_server", "closed_port"])
@pytest.mark.parametrize("args", [["pull", "owner/repo"], ["list", "owner/repo"], ["sparsity", "hf://owner/repo/x"],
                                  ["export", "hf://owner/repo/layer_2/all", "--to", "out"]])
def test_no_network_is_one_line_and_quick(online, request, network, args, tmp_path, monkeypatch):
    online(request.getfixturevalue(network))
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    r = runner.invoke(app, args)
    took = time.perf_counter() - start
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "Could not reach the Hugging Face Hub" in lines[0], r.output
    assert took < 10, took  # the measured figure: about the probe's 1 s here (issue 15 saw hangs and 25-45 s)
    assert not (tmp_path / "out").exists()


def test_no_network_uses_the_local_hub_cache(online, silent_server, tmp_path):
    cache = online(silent_server)
    sae = make_sae(layer=2, tokens="all")
    lay_out_cache(cache, "owner/repo", {"layer_2/all/sae.safetensors": sae_bytes(sae, tmp_path)})
    r = runner.invoke(app, ["pull", "owner/repo", "--out", str(tmp_path / "pulled")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pulled" / "layer_2" / "all" / "sae.safetensors").read_bytes() == sae_bytes(sae, tmp_path)
    r = runner.invoke(app, ["list", "owner/repo"])
    assert r.exit_code == 0 and "layer_2/all" in r.output and "local cache" in r.output, r.output
    assert COMMIT in str(hub.resolve_hf_uri("hf://owner/repo/layer_2/all"))


def test_the_hub_client_has_timeouts(online, silent_server):
    online(silent_server)
    from huggingface_hub import get_session

    with hub._hub_call():
        timeout = get_session().timeout
    assert timeout.connect == hub.CONNECT_TIMEOUT and timeout.read == hub.READ_TIMEOUT


def test_a_silent_server_times_out_instead_of_hanging(online, silent_server, monkeypatch):
    """Even past the reachability check (say the Hub stopped answering after it), a call returns: the read
    timeout ends it."""
    online(silent_server)
    monkeypatch.setattr(hub, "_REACHABLE", {silent_server: True})
    monkeypatch.setattr(hub, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(hub, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(hub, "_TIMEOUTS_SET", [])
    start = time.perf_counter()
    r = runner.invoke(app, ["pull", "owner/repo"])  # repo_info: huggingface_hub passes no timeout of its own
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "Could not reach the Hugging Face Hub" in lines[0], r.output
    assert time.perf_counter() - start < 10


def test_export_takes_an_hf_reference_in_a_fresh_process(tmp_path):
    """``saevit export hf://...`` as its own process (no other import has installed the SAE resolver)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sae = make_sae(layer=2, tokens="all")
    cache = tmp_path / "hf_cache"
    lay_out_cache(cache, "owner/repo", {"layer_2/all/sae.safetensors": sae_bytes(sae, tmp_path)})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(cache)}
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "sae_vit.cli", "export", "hf://owner/repo/layer_2/all", "--to",
                        str(tmp_path / "exported")], env=env, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "exported" / "sae_weights.safetensors").is_file()
