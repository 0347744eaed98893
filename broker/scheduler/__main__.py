"""``python -m broker.scheduler --url URL[,URL]``: the cron scheduler daemon."""

from broker.scheduler.runner import run
from broker.scheduler.settings import SchedulerSettings

if __name__ == "__main__":
    run(SchedulerSettings.from_cli())
