#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Runs a systemd unit's ExecStart= without systemd, with a pid file.

For machines where systemd is not PID 1 (containers, CI, the project's own tests): the roles
render the same unit file either way, and with `*_service_manager: supervisor` this module runs
exactly its command line instead of systemctl. It is not a process supervisor in the sense of
restarting what dies; it starts, stops and reports, as the playbooks need.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: unit_supervisor
short_description: Start, stop or query a systemd unit's ExecStart without systemd
description:
  - Reads the [Service] section of a unit file and runs exactly its C(ExecStart=) command line
    in its C(WorkingDirectory=), with its C(Environment=) and nothing else of the caller's
    environment, detached in a session of its own,
    output appended to C(<run_dir>/<unit>.log) and its pid in C(<run_dir>/<unit>.pid).
  - Stopping sends C(KillSignal=) (default SIGTERM) and waits up to C(TimeoutStopSec=)
    (default 90 s) for the process to exit, then sends SIGKILL, as systemd does.
  - A pid file counts only while that process is alive and still runs the unit's command line,
    so a recycled pid is never signalled.
options:
  unit:
    description: Path of the rendered unit file.
    required: true
    type: path
  run_dir:
    description: Directory of the pid and log files.
    required: true
    type: path
  state:
    description: C(status) changes nothing and reports whether it runs.
    choices: [started, stopped, restarted, status]
    default: started
    type: str
"""

RETURN = r"""
running:
  description: Whether the unit's process runs when the module returns.
  type: bool
pid:
  description: Its pid while it runs, else null.
  type: int
killed:
  description: True if stopping it needed SIGKILL after TimeoutStopSec.
  type: bool
"""


def read_service_section(path):
    """The [Service] keys of a unit file; repeated keys accumulate, continuations are joined."""
    keys = {}
    section = None
    pending = ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = pending + raw.rstrip("\n")
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped[1:-1]
                continue
            if section != "Service" or "=" not in stripped:
                continue
            key, value = stripped.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def command_line(keys, unit):
    values = keys.get("ExecStart") or []
    if len(values) != 1:
        raise ValueError("%s: expected exactly one ExecStart=, found %d" % (unit, len(values)))
    # systemd's prefixes ('-', '@', '+', '!', ':') change how it runs the command; none is used
    # by the roles, and running the bare command is the honest approximation.
    argv = shlex.split(values[0].lstrip("-@+!:"))
    if not argv or not os.path.isabs(argv[0]):
        raise ValueError("%s: ExecStart= must start with an absolute path" % unit)
    return argv


def environment(keys):
    # As systemd: the unit's own Environment= on a clean slate, nothing inherited from the
    # caller (whose environment may hold anything, secrets included).
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for value in keys.get("Environment", []):
        for assignment in shlex.split(value):
            name, _, val = assignment.partition("=")
            env[name] = val
    return env


def seconds(value, default):
    """TimeoutStopSec= as systemd writes it in the roles: '45', '45s' or '2min'."""
    if value is None:
        return default
    value = value.strip()
    for suffix, factor in (("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def stop_signal(keys):
    name = (keys.get("KillSignal") or ["SIGTERM"])[-1]
    return getattr(signal, name if name.startswith("SIG") else "SIG" + name)


def alive_with(pid, argv):
    """The process exists, is no zombie, and runs argv."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except (OSError, IndexError):
        return False
    return state != "Z" and cmdline == argv


class Unit:
    def __init__(self, path, run_dir):
        self.name = os.path.basename(path)
        self.keys = read_service_section(path)
        self.argv = command_line(self.keys, self.name)
        self.pid_file = os.path.join(run_dir, self.name + ".pid")
        self.log_file = os.path.join(run_dir, self.name + ".log")

    def pid(self):
        try:
            with open(self.pid_file, encoding="utf-8") as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if alive_with(pid, self.argv) else None

    def start(self):
        cwd = (self.keys.get("WorkingDirectory") or [None])[-1]
        with open(self.log_file, "ab") as log:
            log.write(("\n===== %s: starting %s\n" % (time.strftime("%FT%TZ", time.gmtime()),
                                                    " ".join(self.argv))).encode())
            log.flush()
            child = subprocess.Popen(  # pylint: disable=consider-using-with
                self.argv,
                cwd=cwd,
                env=environment(self.keys),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        with open(self.pid_file, "w", encoding="utf-8") as f:
            f.write("%d\n" % child.pid)
        # A command that cannot even start (a missing jar, a refused config) exits at once: say
        # so here with its output, rather than leave the caller to time out waiting for it.
        try:
            code = child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return child.pid
        raise RuntimeError("%s exited at once with status %d: %s"
                           % (self.name, code, self.log_tail()))

    def stop(self, pid):
        os.kill(pid, stop_signal(self.keys))
        deadline = time.monotonic() + seconds((self.keys.get("TimeoutStopSec") or [None])[-1], 90)
        while time.monotonic() < deadline:
            if not alive_with(pid, self.argv):
                self.forget()
                return False
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        while alive_with(pid, self.argv):
            time.sleep(0.05)
        self.forget()
        return True

    def forget(self):
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass

    def log_tail(self, chars=2000):
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def main():
    module = AnsibleModule(
        argument_spec={
            "unit": {"type": "path", "required": True},
            "run_dir": {"type": "path", "required": True},
            "state": {"type": "str", "default": "started",
                      "choices": ["started", "stopped", "restarted", "status"]},
        },
        supports_check_mode=True,
    )
    state = module.params["state"]
    try:
        unit = Unit(module.params["unit"], module.params["run_dir"])
    except (OSError, ValueError) as e:
        module.fail_json(msg="cannot read the unit: %s" % e)
    pid = unit.pid()
    result = {"changed": False, "running": pid is not None, "pid": pid, "killed": False}
    if state == "status":
        module.exit_json(**result)
    wants_stop = pid is not None and state in ("stopped", "restarted")
    wants_start = state == "restarted" or (state == "started" and pid is None)
    result["changed"] = wants_stop or wants_start
    if module.check_mode or not result["changed"]:
        module.exit_json(**result)
    try:
        os.makedirs(module.params["run_dir"], exist_ok=True)
        if wants_stop:
            result["killed"] = unit.stop(pid)
            result.update(running=False, pid=None)
        if wants_start:
            result.update(running=True, pid=unit.start())
    except (OSError, RuntimeError) as e:
        module.fail_json(msg=str(e), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
