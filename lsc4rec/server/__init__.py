"""Cloud side: the Flower ServerApp, the federated round loop and its checkpoints."""
