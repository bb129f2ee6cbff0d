"""``python -m terraseg`` runs the CLI."""

from terraseg.cli import main

main()
