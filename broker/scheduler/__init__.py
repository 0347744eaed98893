"""The cron scheduler daemon: ``python -m broker.scheduler`` / ``taskbus scheduler``.

Fires scheduled tasks at their cron instants (exactly once, however many schedulers run) and
keeps continuous tasks running; see ``daemon`` for how, ``service`` for the process around it,
``policy`` for the rules and ``broker.cron`` for time zones and daylight saving time.
"""

from broker.scheduler.service import main, run, serve
from broker.scheduler.settings import SchedulerSettings

__all__ = ["SchedulerSettings", "main", "run", "serve"]
