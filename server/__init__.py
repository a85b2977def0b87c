"""The Flower ServerApp: task orchestration, decoder catalog, aggregation, merge calibration."""
