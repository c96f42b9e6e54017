"""What training means, written once for every way nnlab trains (Lightning's loop, the fused
loop, packed groups): the engine keys a task carries, and why a config cannot run an engine."""
