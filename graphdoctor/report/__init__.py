"""Renderers of results: text for people (coloured on a terminal), json for machines, and the formats CI
systems read: sarif (code scanning), github (Actions annotations) and junit (test reports). `output` puts a
report on stdout or, atomically, in a file."""

from __future__ import annotations

__all__ = ["github", "json", "junit", "output", "sarif", "text"]
