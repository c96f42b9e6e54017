"""Packed sweeps: many trials of a sweep trained as one stacked model (`hydra/launcher=packed`).

stack.py    stacking networks, vmappable module swaps, per-trial optimizer steps
recurrent.py RNN/LSTM/GRU over trials: a batched recurrence, or torch's layer per trial
group.py    training one group of trials (with the task's own loss), each ending in its own
            run directory
launcher.py composing and grouping a sweep's jobs; the ones that cannot be packed run alone
"""
