"""RSS/Atom feeds (the feeds-etl flow's source). constants.py: limits and headers; client.py: the conditional
GET and the parse; tasks.py: the Prefect task and the feeds' checkpoints (the entry points)."""

from tasks.extract.feeds.tasks import checkpoint_source, fetch_feed, load_validators, record_outcomes

__all__ = ["checkpoint_source", "fetch_feed", "load_validators", "record_outcomes"]
