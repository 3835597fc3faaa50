"""The emu testbed: one Linux machine behaving like a small wireless testbed.

Every node is a network namespace with its own address, its own OpenSSH sshd
and a shaped access link; a gateway namespace plays the jump host, so the
orchestration that deploys to Colosseum SRNs or Raspberry Pis over SSH deploys
here unchanged.  Root is required (as for Mininet); without it, use the local
testbed (``--testbed local``).

Modules: :mod:`emu.plan` (names and addresses), :mod:`emu.shaping` (netem or
userspace backend behind one Shaper protocol, as data first), :mod:`emu.shaper`
(the userspace emulator process), :mod:`emu.sshd` (one sshd per namespace),
:mod:`emu.state` (manifests and slots), :mod:`emu.system` (root-side commands),
:mod:`emu.testbed` (``EmuTestbed``), :mod:`emu.linkcheck` (configured vs
measured), :mod:`emu.tasks` (what fab calls).  Link profiles and the
``--links`` spec are shared by every testbed: :mod:`testbed.profiles`.
"""
