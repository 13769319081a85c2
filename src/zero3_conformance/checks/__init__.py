"""One module per clause family; importing them registers their checks."""
