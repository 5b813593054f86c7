"""Pipeline stages (synth, prep, ...) and what they share: config, storage, tracking, raw-data formats."""
