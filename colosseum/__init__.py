"""The Colosseum testbed: SRNs of a reservation as JARVIS nodes, over emulated RF (docs/colosseum.md).

Modules: :mod:`colosseum.inventory` (the reservation, validated),
:mod:`colosseum.plan` (every remote command, as data; ``--dry-run``),
:mod:`colosseum.network` (addresses per role and the routes that make RF
carry the traffic), :mod:`colosseum.rf` (reading colosseumcli),
:mod:`colosseum.testbed` (``ColosseumTestbed``), :mod:`colosseum.batch` and
:mod:`colosseum.batch_runner` (unattended batch jobs and their collection).
Shared with the Raspberry Pi testbed: :mod:`colosseum.remote` (Fabric
shells that log in as the user's ssh does), :mod:`colosseum.state` (what was
set up, for an exact ``down``), :mod:`colosseum.yamlfile` (inventory files with line-numbered errors).
"""
