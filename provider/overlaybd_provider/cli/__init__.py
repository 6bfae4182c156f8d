"""The ``overlaybd`` console script: one argparse sub-command per module in this package."""
