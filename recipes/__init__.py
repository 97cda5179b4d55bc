"""The shipped recipes: TOML files with each paper's settings (read by mmvae_cli.config).

Installed as the package data `mmvae_cli.recipes`, so wheel and editable installs read the same files.
"""
