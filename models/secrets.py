"""Secrets kept in Prefect Secret blocks, loaded by name when needed: a message names the block and the setting
that names it, never the value."""

from __future__ import annotations


def secret_block_value(name: str, setting: str) -> object:
    """What the Secret block `name` holds, as saved (a string, or a JSON value); ConfigError naming `setting`
    when it cannot be loaded."""
    from prefect.blocks.system import Secret

    from models.settings import ConfigError

    try:
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]  # (Prefect's sync dispatch keyword)
    except Exception as exc:  # the message names the block, never its value
        raise ConfigError(
            f"{setting}: could not load the Prefect Secret block {name!r} ({type(exc).__name__})"
        ) from None
    assert isinstance(block, Secret)  # (loaded synchronously)
    return block.value.get_secret_value()


def secret_block_text(name: str, setting: str) -> str:
    """The string the Secret block `name` holds (not Secret.get(), which JSON-decodes a passphrase like "1234")."""
    from models.settings import ConfigError

    value = secret_block_value(name, setting)
    if not isinstance(value, str):
        raise ConfigError(f"{setting}: Secret block {name!r} must hold a string")
    return value
