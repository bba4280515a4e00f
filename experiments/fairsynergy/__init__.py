"""FairSynergy experiments: ``python -m experiments.fairsynergy.{table,sweep,boxplots}``."""
