"""The launcher: ``taskbus up``, ``server``, ``executor``, ``scheduler`` and ``console``.

It sits at the top of the dependency graph: it may import ``console``, ``sdk`` and ``broker``,
and nothing imports it but ``console.cli`` (the ``taskbus`` script). The executor and the
scheduler are started as ``python -P -m <package>`` processes, never imported.

- ``daemons``: ``taskbus executor|scheduler|console`` become that daemon;
- ``supervisor``: a daemon kept running (restarted with back-off) while the stack runs;
- ``stack``: ``taskbus up`` and ``taskbus server``;
- ``events``: ``taskbus up --no-console``, a line per run event.
"""
