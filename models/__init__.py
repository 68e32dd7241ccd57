"""SQLModel tables, API variants, settings and the frame validation schema (imports nothing above it)."""

# constraint names for the tables every model module defines (migrations refer to them)
import models.naming  # noqa: F401
