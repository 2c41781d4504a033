"""From the app's tables to examples: the dataset relations, snapshots, the split rule, legacy CSV, demo data."""
