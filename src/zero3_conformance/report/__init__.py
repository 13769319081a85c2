"""Compatibility reports: run directories (one per cell) aggregated into report.json, .md and .html."""

from .aggregate import CellResult, aggregate, load_cell
from .render import write_report

__all__ = ["CellResult", "aggregate", "load_cell", "write_report"]
