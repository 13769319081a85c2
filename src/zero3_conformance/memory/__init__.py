"""Peak memory of building one model (clause P3): `probe` is the process that measures, `client` what a
rank calls to have its probe measure."""
