"""What training means, written once for every way nnlab trains (Lightning's loop, the fused
loop, packed groups): the engine keys a task carries, why a config cannot run an engine
(capabilities.py), the optimizer step (step.py), weight averaging (averaging.py) and the
end-of-epoch decisions (policy.py)."""
