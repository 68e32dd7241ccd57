"""RSS/Atom feeds (the feeds-etl flow's source). constants.py: limits and headers; client.py: the conditional
GET and the parse; outcome.py: what one feed's fetch came to; tasks.py: the Prefect task, the run's raw file and
the feeds' checkpoints (the entry points)."""

from tasks.extract.feeds.outcome import FeedOutcome
from tasks.extract.feeds.tasks import checkpoint_source, fetch_feed, load_validators, merge_parts, record_outcomes

__all__ = ["FeedOutcome", "checkpoint_source", "fetch_feed", "load_validators", "merge_parts", "record_outcomes"]
