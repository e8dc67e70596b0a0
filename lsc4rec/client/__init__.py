"""Device side: the Flower ClientApp, the device shards a SuperNode hosts, and local training."""
