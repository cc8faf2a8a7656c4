"""Renderers of results: text for people (coloured on a terminal), json for machines."""

from __future__ import annotations

__all__ = ["json", "text"]
