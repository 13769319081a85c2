"""Worlds of rank processes and what runs in them: worlds the harness starts and keeps (world), worlds a
launcher started (launched), and how a task's outcome on every rank becomes one verdict. Nothing here knows
of transformers, the contract or its checks."""
