"""nftables: the ``firewall`` backend (the only code in the agent that touches nftables).

Selected with ``"backends": {"firewall": "nftables"}`` (or ``auto``, which picks
it when the ``nft`` executable is found). Configured by the ``nftables`` section::

    "nftables": {"table": "moenet_agent", "chainPriority": -10,
                 "managedRange": "20000-29999", "nftPath": "nft", "timeout": 10}

What it creates
---------------
One table, nothing else (``nft list table inet moenet_agent``)::

    table inet moenet_agent {
        comment "managed by moenet-agent: hand edits are overwritten on its next sync"
        set udp_ports {
            type inet_service
            comment "moenet-agent: UDP ports open for tunnels"
            elements = { 51820, 51821 }
        }
        set udp_ports_mesh {
            type inet_service
            comment "moenet-agent: UDP ports open for tunnels of mesh"
            elements = { 20100 }
        }
        chain input {
            comment "moenet-agent: tunnel ports (priority before the usual filter chain)"
            type filter hook input priority -10; policy accept;
            udp dport @udp_ports counter accept comment "moenet-agent: open ports"
            udp dport @udp_ports_mesh counter accept comment "moenet-agent: open ports of mesh"
            udp dport 20000-29999 counter drop comment "moenet-agent: closed ports of the managed range"
        }
    }

The drop rule exists only when ``managedRange`` is set. The chain's policy is
``accept``: outside the managed range the agent never drops anything.

Owners
------
Several plugins open ports (the eBGP ``sessions``, the IGP ``mesh``); each call
names its owner (``sync(ports, owner=...)``, ``list_ports(owner)``) and every
owner has its own set and accept rule:

- owner ``sessions`` (the default): set ``udp_ports`` and the rule commented
  ``moenet-agent: open ports``, exactly what the table held before owners
  existed, so a table written by an older agent is read as the sessions
  plugin's and an upgrade rewrites nothing;
- any other owner (1-32 of ``a-z0-9_-``, starting with a letter): set
  ``udp_ports_<owner>`` with its own accept rule (after the sessions rule,
  others by name, before the managed-range drop rule). It exists while the
  owner has ports; syncing an empty set removes both.

A port is open while any owner has it. ``sync`` changes only its owner's set,
still by rewriting the whole table in one ``nft -f`` transaction: the other
owners' sets are taken from the listing read just before (under one lock), so
they are written back exactly as the kernel had them. ``list_ports()`` is the
union of all owners' sets, ``list_ports(owner)`` one owner's.

How it is recognised as the agent's own
---------------------------------------
By its name: the ``inet`` table called ``nftables.table``, which must start with
``moenet`` (so a typo can never point the agent at ``filter`` or another tool's
table). Everything inside that table belongs to the agent and is rewritten
whole when it differs (a hand-added element or rule is removed, a deleted rule
comes back, and the repair is logged and counted in
``moenet_nftables_drift_repairs_total``). A hand edit of an owner's set is
kept by the other owners' syncs (they write it back as listed) and undone by
that owner's next sync; a set whose name is not an owner's is removed. The comments are for people reading
``nft list ruleset``. No other table, chain or set is ever read or written;
``remove_all`` deletes just this table. Shutting the agent down leaves the table
in place (the tunnels keep running, so must their ports). Renaming the table
leaves the old one behind: delete it with ``nft delete table inet OLDNAME``.

Integrating with a default-drop firewall
----------------------------------------
nftables evaluates every base chain on a hook; an ``accept`` ends only the chain
it is in, a ``drop`` anywhere is final. So the agent's ``accept`` cannot open a
port your own ``policy drop`` chain closes, and it should not: the node's
firewall stays yours. Instead, delegate a port range to the agent:

1. Give WireGuard peerings ports from one range, e.g. 20000-29999, outside the
   kernel's local port range (``sysctl net.ipv4.ip_local_port_range``, by default
   32768-60999; the agent warns at start about an overlap, since replies to
   outgoing UDP from a port in the range would be dropped).
2. In your own input chain accept that range: ``udp dport 20000-29999 accept``.
3. Set ``"managedRange": "20000-29999"``. The agent's chain runs first
   (``chainPriority`` -10, below ``filter``'s 0; lower it if your chain runs
   earlier) and drops every port in the range that no tunnel uses, so only
   the open ports reach your accept rule.

Without a default-drop firewall, leave ``managedRange`` unset and the table only
records (and counts) the open ports, or set it to have the agent close the
rest of the range.

Metrics and cost
----------------
``moenet_nftables_transactions_total`` (writes), ``moenet_nftables_drift_repairs_total``
(hand edits undone) and ``moenet_nftables_open_ports{owner}`` (ports in each
owner's set; 0 for an owner whose set is gone). A sync that finds the
table as wanted costs one ``nft -j list table`` (about 6 ms) and writes nothing;
one that changes it costs a read, one write and a read-back (about 30 ms).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from moenet_core import BackendSpec, ConfigSection, hookimpl
from moenet_core.config import AgentConfig

from .backend import NftablesError, NftablesFirewall
from .config import NftablesConfig

__all__ = ["NftablesConfig", "NftablesError", "NftablesFirewall"]

SECTION = "nftables"


def _nft_path(config: AgentConfig) -> str:
    raw = config.plugin_sections.get(SECTION)
    path = raw.get("nftPath") if isinstance(raw, Mapping) else None
    return path if isinstance(path, str) and path else "nft"


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [ConfigSection(name=SECTION, type=NftablesConfig, description="The agent's nftables table")]


@hookimpl
def moenet_backends(config: AgentConfig) -> list[BackendSpec]:
    nft = _nft_path(config)
    return [
        BackendSpec(
            kind="firewall",
            name="nftables",
            factory=NftablesFirewall.from_context,
            probe=lambda: shutil.which(nft) is not None,
            description="UDP tunnel ports in one agent-owned nftables inet table",
        )
    ]
