"""The SSH testbed: any Linux hosts a lab has (servers, Jetsons, NUCs, Pis of any make), reached over SSH.

Hosts come from an inventory and are reached the way the user's ssh config
says (agent, keys, ProxyJump); the payload runs from a venv that is given
or provisioned; link profiles are applied with kernel ``tc netem`` on each
host's data interface; every remote command is data (:mod:`sshhosts.plan`),
shown by ``--dry-run`` before anything connects.  The Raspberry Pi testbed
is this testbed plus Pi provisioning.
"""
