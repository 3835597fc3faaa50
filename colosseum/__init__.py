"""The Colosseum testbed: SRNs of a reservation as JARVIS nodes, over emulated RF (docs/colosseum.md).

Modules: :mod:`colosseum.inventory` (the reservation, validated),
:mod:`colosseum.plan` (every remote command, as data; ``--dry-run``),
:mod:`colosseum.network` (addresses per role and the routes that make RF
carry the traffic), :mod:`colosseum.rf` (reading colosseumcli),
:mod:`colosseum.testbed` (``ColosseumTestbed``), :mod:`colosseum.batch_runner`
(the standalone runner a batch-mode container executes).  Generating batch
bundles and collecting their logs is orchestration: :mod:`experiment.batch`.
SSH, state, inventory loading and addresses come from the shared toolkit
(:mod:`testbed`).
"""
