"""launch binds its processes to the loopback interface, whatever the host name resolves to."""

import os
import socket
import sys

import pytest

from course_lib import distributed
from course_lib.distributed import launch, local_launch_environment, loopback_interface


def test_the_loopback_interface_of_this_machine_is_found():
    if sys.platform.startswith("linux"):
        assert loopback_interface() == "lo"
    elif sys.platform == "darwin":
        assert loopback_interface() == "lo0"


def test_the_macos_name_is_found(monkeypatch):
    monkeypatch.setattr(distributed.sys, "platform", "darwin")
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(1, "lo0"), (4, "en0"), (9, "utun3")])
    assert loopback_interface() == "lo0"


def test_no_name_where_none_can_be_given(monkeypatch):
    monkeypatch.setattr(distributed.sys, "platform", "win32")
    assert loopback_interface() is None
    monkeypatch.setattr(distributed.sys, "platform", "linux")

    def unavailable():
        raise OSError("no interfaces")

    monkeypatch.setattr(socket, "if_nameindex", unavailable)
    assert loopback_interface() is None


def test_a_local_launch_meets_on_the_loopback(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(distributed, "loopback_interface", lambda: "lo")
    variables = local_launch_environment(1, 2, 29500)
    assert variables["MASTER_ADDR"] == "127.0.0.1"
    assert variables["GLOO_SOCKET_IFNAME"] == "lo"
    assert (variables["RANK"], variables["WORLD_SIZE"], variables["MASTER_PORT"]) == ("1", "2", "29500")


def test_an_interface_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    assert local_launch_environment(0, 2, 29500)["GLOO_SOCKET_IFNAME"] == "eth1"


def test_no_interface_variable_without_a_loopback_name(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(distributed, "loopback_interface", lambda: None)
    assert "GLOO_SOCKET_IFNAME" not in local_launch_environment(0, 2, 29500)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the loopback is named lo on Linux")
def test_the_processes_see_the_loopback_binding(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert launch(os.getenv, 2, "GLOO_SOCKET_IFNAME", timeout_s=120) == ["lo", "lo"]
