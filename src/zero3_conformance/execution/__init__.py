"""Running cases: the runner (cases in worlds, tries again, records) and the run (a plan, its run directory,
resume); what ranks import once where they start (warm)."""
