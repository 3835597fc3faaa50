"""The Raspberry Pi testbed: Pis on Wi-Fi as JARVIS nodes over SSH (docs/rpi.md).

Modules: :mod:`rpi.inventory` (the Pis, validated), :mod:`rpi.provision`
(packages, chrony, Wi-Fi through nmcli, the venv; as data), :mod:`rpi.units`
(one systemd unit per node service, and fault commands), :mod:`rpi.clock`
(``chronyc tracking`` readings), :mod:`rpi.testbed` (``RpiTestbed``).
"""
