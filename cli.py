"""Run the edgeseg CLI from a checkout: `python cli.py --help`."""

from edgeseg.cli import main

main()
