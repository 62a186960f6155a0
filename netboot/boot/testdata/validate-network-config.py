#!/usr/bin/env python3
"""Validate network-config v2 files with cloud-init's own parser.

cloud-init 22.4 (Debian 12) has no `cloud-init schema --schema-type
network-config` and ships no network-config JSON schema, so each file is
read the way NoCloud reads it (top-level "network" key removed), parsed by
cloudinit.net.network_state with skip_broken=False (any bad entry raises),
and rendered by the networkd and netplan renderers. Because the v2 parser
ignores keys it does not know, keys are also checked against the netplan v2
keys cloud-init understands.

Usage: validate-network-config.py FILE...   (exit 1 on the first error)
"""
import sys

import yaml
from cloudinit.net import netplan, networkd
from cloudinit.net.network_state import parse_net_config_data

COMMON = {"addresses", "dhcp4", "dhcp6", "gateway4", "gateway6", "nameservers", "mtu", "routes", "match", "set-name", "wakeonlan"}
KEYS = {
    "ethernets": COMMON,
    "bonds": COMMON | {"interfaces", "parameters", "macaddress"},
    "vlans": COMMON | {"id", "link"},
}
BOND_PARAMS = {"mode", "lacp-rate", "mii-monitor-interval", "transmit-hash-policy", "primary"}


def check(path):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    if isinstance(cfg, dict) and "network" in cfg:
        cfg = cfg["network"]
    if not isinstance(cfg, dict) or cfg.get("version") != 2:
        raise ValueError("not network-config version 2")
    for key in cfg:
        if key != "version" and key not in KEYS:
            raise ValueError(f"unknown top-level key {key!r}")
    for section, allowed in KEYS.items():
        for name, dev in (cfg.get(section) or {}).items():
            extra = set(dev) - allowed
            if extra:
                raise ValueError(f"{section}.{name}: unknown keys {sorted(extra)}")
            for k in set(dev.get("nameservers") or {}) - {"addresses", "search"}:
                raise ValueError(f"{section}.{name}.nameservers: unknown key {k!r}")
            for k in set(dev.get("parameters") or {}) - BOND_PARAMS:
                raise ValueError(f"{section}.{name}.parameters: unknown key {k!r}")
    defined = set()
    for section in KEYS:
        defined |= set(cfg.get(section) or {})
    for name, bond in (cfg.get("bonds") or {}).items():
        for member in bond.get("interfaces") or []:
            if member not in (cfg.get("ethernets") or {}):
                raise ValueError(f"bonds.{name}: member {member!r} is not an ethernet")
    for name, vlan in (cfg.get("vlans") or {}).items():
        if vlan.get("link") not in defined:
            raise ValueError(f"vlans.{name}: link {vlan.get('link')!r} is not defined")
    ns = parse_net_config_data(cfg, skip_broken=False)
    networkd.Renderer()._render_content(ns)
    netplan.Renderer()._render_content(ns)
    names = {i["name"] for i in ns.iter_interfaces()}
    for section in KEYS:
        for name in cfg.get(section) or {}:
            if name not in names:
                raise ValueError(f"{section}.{name}: not in cloud-init's network state ({sorted(names)})")


def main(paths):
    for p in paths:
        try:
            check(p)
        except Exception as e:  # report which file, then fail
            print(f"{p}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"{p}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
