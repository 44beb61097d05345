"""ACME support team's itune presets. Add them with `hydra.searchpath=[pkg://acme_presets]`:
model=acme_tiny, data=acme_support, experiment=acme_support. Files are referenced with
`${package_file:acme_presets/files/...}`, so the presets work wherever this package is installed."""
