"""The Flower ClientApp: a hospital site, its private data, local training."""
