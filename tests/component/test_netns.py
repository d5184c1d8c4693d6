"""The namespace fixture itself: isolated, and removed without a trace."""

from __future__ import annotations

import subprocess

import pytest

from moenet_core.testing import veth_pair


@pytest.mark.netns
def test_namespaces_are_isolated_and_removed(netns):
    a, b = netns(), netns()
    veth_pair(a, b, "va", "vb")
    a.run("ip", "addr", "add", "192.0.2.1/24", "dev", "va")
    b.run("ip", "addr", "add", "192.0.2.2/24", "dev", "vb")
    assert a.run("ping", "-c", "1", "-W", "5", "192.0.2.2").returncode == 0
    host = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert "va" not in host.split() and "vb" not in host.split()
    with a.entered():
        inside = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert inside.split()[0] == "lo" and "va@vb" not in host
    a.remove()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert a.name not in listed
