"""Plain nn.Modules, one family per file, no training logic."""
