"""The rootless local testbed: node processes on 127.0.0.1, forked warm from one spawner (:mod:`local.testbed`,
:mod:`local.spawner`)."""
