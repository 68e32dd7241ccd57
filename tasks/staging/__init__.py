"""Staging: files of byte spans, the manifests streaming stages hand batches through, and the stage runner."""
