"""The Taskbus executor: takes task runs from the bus, prepares their environments, runs
``main.py`` in its own process group, streams its logs, enforces timeouts and kills, and
reports every status. Started with ``python -m executor`` (or ``taskbus executor``)."""
