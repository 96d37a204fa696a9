"""Checks of systemd/: the unit's settings and the example configs.

`systemd-analyze verify` runs when it is installed (with ExecStart pointed at /bin/true,
since podsnapd is not installed here); only warnings about keys newer than the local
systemd (RestartSteps, RestartMaxDelaySec: systemd 254) are tolerated. Without it the check
is skipped, or fails with PODSNAP_REQUIRE_PRIVILEGED=1 (make test as root).
"""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from test_manifests import PODSNAPD_KEYS, WRAPPER_KEYS

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "podsnapd.service"


def unit_settings():
    settings, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key), []).append(value)
    return settings


def test_unit_settings():
    s = unit_settings()
    svc = lambda k: s.get(("Service", k), [None])[-1]  # noqa: E731
    assert svc("Type") == "simple"
    assert svc("StateDirectory") == "podsnap"
    assert svc("RuntimeDirectory") == "podsnap"
    assert svc("Restart") == "on-failure"
    assert svc("RestartSec")
    assert svc("KillMode") == "process"
    assert svc("ProtectSystem") == "strict"
    rw = svc("ReadWritePaths").split()
    assert "/run" in rw and "/var/lib/podsnap" in rw
    assert svc("ExecStart").startswith("/usr/local/bin/podsnapd --config /etc/podsnap/podsnapd.toml")
    # Options that would break runsc must stay out (see the unit's header).
    for bad in ["PrivateNetwork", "PrivateTmp", "PrivateDevices", "SystemCallFilter",
                "RestrictNamespaces", "CapabilityBoundingSet", "ProtectControlGroups",
                "MemoryDenyWriteExecute", "RestrictAddressFamilies"]:
        assert ("Service", bad) not in s, bad
    assert s[("Install", "WantedBy")] == ["multi-user.target"]


REQUIRED = os.environ.get("PODSNAP_REQUIRE_PRIVILEGED") == "1"


def missing(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (PODSNAP_REQUIRE_PRIVILEGED=1)")
    pytest.skip(reason)


def test_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze not installed (Debian package systemd)")
    unit = tmp_path / "podsnapd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/podsnapd", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and not re.search(r"Unknown key '(RestartSteps|RestartMaxDelaySec)'", line)]
    assert r.returncode == 0 and not problems, problems


def test_example_configs_parse():
    daemon = tomllib.loads((SYSTEMD / "podsnapd.toml").read_text())
    assert set(daemon) <= PODSNAPD_KEYS and daemon["listen"].startswith("unix:///")
    wrapper = tomllib.loads((SYSTEMD / "podsnap.toml").read_text())
    assert set(wrapper) <= WRAPPER_KEYS
    assert wrapper["socket"] == daemon["listen"].removeprefix("unix://")
