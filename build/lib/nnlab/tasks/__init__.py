"""LightningModules: loss, metrics and optimisers around an injected network."""
