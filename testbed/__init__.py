"""The toolkit every testbed is built on (local, emu, Colosseum, Raspberry Pi), so they never import each other.

Modules, one concern each: :mod:`testbed.interface` (the Testbed interface,
hosts, fault kinds, results), :mod:`testbed.profiles` (link profiles as cited
data, ``--links``), :mod:`testbed.ssh` (one SSH shell over Fabric: gateways,
connect timeouts, host-key policy, batched commands, streamed processes),
:mod:`testbed.shell` (the same Shell on this machine), :mod:`testbed.state`
(the atomic JSON state store and its command transcript), :mod:`testbed.yamlfile`
(validated YAML with line-numbered errors), :mod:`testbed.addresses` (reading
addresses, reachability), :mod:`testbed.fanout` (one thing on many hosts,
every failure reported), :mod:`testbed.shipping` (the payload archive and the
node service's command line).
"""
