"""The conformance suite as pytest runs it, shipped with the package: `pytest --pyargs zero3_conformance` (with
-n, -k, --junitxml and the plugin's --z3-* options) runs the catalog's cases from any directory."""
