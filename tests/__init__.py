"""Tests mirroring the packages: unit, integration (real engines) and end-to-end."""
