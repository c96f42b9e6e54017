"""LightningDataModules: each knows its data's shapes, so models are sized from it."""
