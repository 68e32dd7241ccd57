"""RSS/Atom fetching constants (kept apart from the logic)."""

SOURCE = "feeds"
CHECKPOINT_PREFIX = "feed:"  # etl_checkpoints.source is `feed:<url>` ...
CHECKPOINT_SOURCE_MAX = 128  # ... or `feed:sha256:<hex of url>` when the URL does not fit the column
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_FEED_BYTES = 50 * 1024 * 1024  # a bigger document is refused, not buffered
MAX_PARALLEL_FETCHES = 8
ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
USER_AGENT = "sluice-feeds/0.1 (+conditional GET)"
