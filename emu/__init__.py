"""The emu testbed: one Linux machine behaving like a small wireless testbed.

Every node is a network namespace with its own address, its own OpenSSH sshd
and a shaped access link; a gateway namespace plays the jump host, so the
orchestration that deploys to Colosseum SRNs or Raspberry Pis over SSH deploys
here unchanged.  Root is required (as for Mininet); without it, use the local
testbed (``--testbed local``).

Modules: :mod:`emu.profiles` (link profiles as cited data), :mod:`emu.plan`
(names and addresses), :mod:`emu.shaping` (netem or userspace backend, as data
first), :mod:`emu.shaper` (the userspace emulator process), :mod:`emu.testbed`
(``EmuTestbed``), :mod:`emu.remote` (Fabric shell via the gateway),
:mod:`emu.linkcheck` (configured vs measured), :mod:`emu.tasks` (what fab calls).

``--links SPEC`` assigns a profile to each node's access link.  SPEC is a
comma-separated list of items, applied left to right:

* ``NAME``: the profile of every node not named by an index item
  (default ``wifi``);
* ``I=NAME``: node ``I`` (0 is the user node, 1..N the layer nodes);
* ``A-B=NAME``: nodes ``A`` to ``B`` inclusive.

Examples: ``wifi`` (all Wi-Fi), ``1=wifi,2=cellular,3-5=server`` (user node
gets the default ``wifi``), ``server,0=cellular`` (a cellular user in front of
wired servers).  NAME is a shipped profile (``wifi``, ``cellular``,
``server``, ``ideal``; see ``emu/profiles.yaml`` with the source of every
number) or one from the user's profile file (``--profiles FILE``, same format).
"""
