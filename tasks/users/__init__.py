"""The users pipeline's own work: transform (rules applied), persist (tables), sync (absent users, the DLQ lifecycle)."""
