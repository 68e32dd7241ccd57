"""SQLModel tables, API variants, settings and the frame validation schema (imports nothing above it)."""
