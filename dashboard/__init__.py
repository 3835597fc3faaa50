"""JARVIS live dashboard: a local web page showing a run as it happens (or replaying a finished one).

Data flows one way, as everywhere in JARVIS: node event logs (the run-directory schema's events, read
while they are written) and the fault runner's records go into one :class:`~dashboard.feed.Feed`; the
page folds that stream into the chain's picture.  A replay pushes a finished run directory's events
through the same feed, so a live run and its replay draw the same page.

- ``feed``: the message stream (history for late pages, thread-safe publishing).
- ``follow``: live messages from every host's ``events.jsonl`` via :meth:`Testbed.follow`.
- ``replay``: a run directory's messages, in time order, at any speed.
- ``app`` / ``server``: the Starlette app (page, assets, server-sent events) and uvicorn on 127.0.0.1.
"""
