"""The Taskbus bus contract: names, wire records, statuses, provisioning, the embedded server,
the orchestration zip format, and the scheduler daemon."""
