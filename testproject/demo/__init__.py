"""The demo app: generates a realistic result history for ``make demo``. Demo settings only."""
