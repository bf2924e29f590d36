"""The dashboard's own Streamlit settings hold however it is started: a real ``streamlit run`` of the app by
its absolute path, from a folder that is not the repository root, listens on 127.0.0.1 only (never on every
interface: whoever reaches it reads the store), gathers no usage statistics, shows no "Deploy" button and
offers no "Ask Google" / "Ask ChatGPT" links in an exception box.

Streamlit reads ``.streamlit/config.toml`` of the working folder, and also the one beside the main script
(dashboard/.streamlit/config.toml), which is what makes these hold from anywhere. No browser is needed: the
kernel's table of listening sockets says where the server listens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import APP, ROOT

from tools.screenshots import free_port, wait_healthy

pytestmark = pytest.mark.slow

LISTEN = "0A"  # the TCP state "listening" in /proc/net/tcp


def listening_addresses(port: int) -> set[str]:
    """Every local address a socket listens on at ``port`` (IPv4 and IPv6), from the kernel's tables:
    "127.0.0.1", "0.0.0.0", "::", "::1"..."""
    out = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != LISTEN or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            if width == 8:
                out.add(".".join(str(b) for b in words))
            else:
                import ipaddress

                out.add(str(ipaddress.IPv6Address(words)))
    return out


def _start(cwd: Path, port: int, log: Path) -> subprocess.Popen:
    # As a user would type it elsewhere: no --server.address, no other settings on the command line.
    cmd = [sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true", "--server.port", str(port),
           "--server.fileWatcherType", "none", "--", "--db", str(cwd / "none.duckdb")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("where", ["another folder", "the dashboard folder"])
def test_the_dashboard_listens_on_loopback_only_from_any_working_folder(tmp_path, where):
    cwd = tmp_path if where == "another folder" else ROOT / "dashboard"
    port = free_port()
    log = tmp_path / "streamlit.log"
    proc = _start(cwd, port, log)
    try:
        wait_healthy(proc, port, log)
        assert listening_addresses(port) == {"127.0.0.1"}, log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Collecting usage statistics" not in text and "Network URL" not in text, text


SETTINGS = """
import json, sys
from streamlit import config
config._main_script_path = sys.argv[1]  # what `streamlit run FILE` sets before it reads the settings
config.get_config_options(force_reparse=True)
print(json.dumps({k: config.get_option(k) for k in
                  ("server.address", "browser.gatherUsageStats", "client.toolbarMode", "client.showErrorLinks")}))
"""


def test_the_dashboards_settings_are_read_beside_the_app_not_from_the_working_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    out = subprocess.run([sys.executable, "-c", SETTINGS, APP], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "server.address": "127.0.0.1", "browser.gatherUsageStats": False, "client.toolbarMode": "minimal",
        "client.showErrorLinks": False}
