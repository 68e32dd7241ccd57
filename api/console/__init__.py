"""The web console: pages for people over the API's own queries, rendered on the server (Jinja2), no build step
and nothing fetched from elsewhere. `mount_console` adds it to an app."""

from api.console.mount import mount_console

__all__ = ["mount_console"]
