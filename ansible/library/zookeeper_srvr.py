#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Asks a ZooKeeper server `srvr` (the one four-letter word the role whitelists)."""

from __future__ import annotations

import socket

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: zookeeper_srvr
short_description: Whether a ZooKeeper server serves, and as leader, follower or standalone
description:
  - Sends the four-letter word C(srvr) to one server and reads its answer. A server that is not
    part of a quorum answers that it is not serving requests; one that is not running refuses
    the connection. Neither is a failure of the module; C(serving) says which.
  - Never changes anything.
options:
  host:
    description: Address of the server's client port.
    default: 127.0.0.1
    type: str
  port:
    description: Its client port.
    required: true
    type: int
  timeout_s:
    description: Connect and read timeout.
    default: 5
    type: float
"""

RETURN = r"""
serving:
  description: The server answered with its mode, so it serves clients.
  type: bool
mode:
  description: leader, follower, observer or standalone while serving, else null.
  type: str
zxid:
  description: Its last zxid while serving (hex), else null.
  type: str
answer:
  description: The raw answer, or why there was none.
  type: str
"""


def ask(host, port, timeout):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"srvr")
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def field(answer, name):
    for line in answer.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "required": True},
            "timeout_s": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        answer = ask(p["host"], p["port"], p["timeout_s"])
    except OSError as e:
        answer = "no answer: %s" % e
    mode = field(answer, "Mode")
    module.exit_json(
        changed=False,
        serving=mode is not None,
        mode=mode,
        zxid=field(answer, "Zxid"),
        answer=answer,
    )


if __name__ == "__main__":
    main()
