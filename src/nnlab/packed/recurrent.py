"""RNN / LSTM / GRU layers of many trials at once: the recurrence runs on the trials' stacked
weights with one batched matrix product per step, instead of vmapping a step-by-step cell.

`recurrence(mode, reverse, x, w_ih, w_hh, b_ih, b_hh)` takes a trial axis in front of every
tensor (x (trials, batch, steps, in), weights (trials, gates * hidden, ...)) and
- projects the inputs of every step at once: one `baddbmm` over the trial axis
  ((trials, steps * batch, in) x (trials, in, gates * hidden)), time-major so that each step's
  slice is contiguous;
- runs the recurrence with one `baddbmm` per step ((trials, batch, hidden) x (trials, hidden,
  gates * hidden)) and the gate math in place on that step's slice;
- has a hand-written backward (`RecurrenceFn`): one product per step for the gradient flowing to
  the previous state, and the weights' gradients as three products over all steps at the end.
  Autograd through the unrolled cell instead keeps every small intermediate and pays two
  products per step (and, with `inputs[:, t]` slices, a full-size zero gradient per step).

Under `torch.vmap` (the packed trainer vmaps the whole network over trials) `RecurrenceFn.vmap`
moves the vmapped axis to the front and picks the kernel (`TrialRNN.kernel`, the launcher's
`hydra.launcher.recurrent`):
- `batched`: the batched recurrence above, for all trials at once;
- `per_trial`: each trial's own torch RNN/LSTM/GRU call (oneDNN's fused kernel on a CPU), in a
  loop over the trials: exactly the sequential trial's arithmetic;
- `auto` (default): `per_trial` on a CPU, `batched` elsewhere. On a CPU the work is the same
  arithmetic either way, and the fused kernel does the gate math in cache, where the batched one
  makes several full passes over (trials, batch, hidden) per step (measured: docs/packed.md). On
  a GPU one batched product per step for all trials replaces a kernel launch per trial.
The equations and gate order are torch's (LSTM i, f, g, o; GRU r, z, n with b_hn inside
r * (.)), so a `state_dict` moves between `TrialRNN` and nn.RNN/LSTM/GRU as is.
"""

from __future__ import annotations

import torch
from torch import nn

DROPOUT_RATE = "packed_dropout_rate"  # per-trial dropout rates live in buffers of this name
GATES = {"lstm": 4, "gru": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def trial_dropout(x: torch.Tensor, p: torch.Tensor, training: bool) -> torch.Tensor:
    if not training:
        return x
    keep = (torch.rand_like(x) >= p).to(x.dtype)
    return x * keep / (1 - p).clamp_min(1e-12)


def _forward(mode: str, reverse: bool, x, w_ih, w_hh, b_ih, b_hh):
    """(outputs (trials, batch, steps, hidden), h_n, c_n (trials, batch, hidden; zeros but for
    LSTM), and what the backward reads: the activated gates of every step, the LSTM's cell
    states and their tanh, the GRU's W_hn h + b_hn)."""
    trials, batch, steps, _ = x.shape
    hidden = w_hh.shape[-1]
    xt = x.transpose(1, 2).reshape(trials, steps * batch, -1)  # time-major rows
    bias = (b_ih + b_hh if mode != "gru" else b_ih).unsqueeze(1)
    pre = torch.baddbmm(bias, xt, w_ih.transpose(1, 2)).view(trials, steps, batch, -1)
    w_hh_t = w_hh.transpose(1, 2)
    h = x.new_zeros(trials, batch, hidden)
    c = x.new_zeros(trials, batch, hidden)
    outs = x.new_empty(trials, steps, batch, hidden)
    none = x.new_empty(trials, 0)
    cells = x.new_empty(trials, steps, batch, hidden) if mode == "lstm" else none
    tanh_c = x.new_empty(trials, steps, batch, hidden) if mode == "lstm" else none
    hn = x.new_empty(trials, steps, batch, hidden) if mode == "gru" else none
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        g = pre[:, t]  # this step's gates, activated in place (the backward reads them)
        if mode == "lstm":
            g.baddbmm_(h, w_hh_t)
            g[..., : 2 * hidden].sigmoid_()
            g[..., 2 * hidden : 3 * hidden].tanh_()
            g[..., 3 * hidden :].sigmoid_()
            i, f, gg, o = g.chunk(4, dim=-1)
            c = torch.addcmul(f * c, i, gg, out=cells[:, t])
            torch.mul(o, torch.tanh(c, out=tanh_c[:, t]), out=outs[:, t])
        elif mode == "gru":
            gh = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh_t)
            g[..., : 2 * hidden].add_(gh[..., : 2 * hidden]).sigmoid_()
            r, z, n = g.chunk(3, dim=-1)
            hn[:, t] = gh[..., 2 * hidden :]
            n.addcmul_(r, hn[:, t]).tanh_()
            torch.addcmul(n, z, h - n, out=outs[:, t])  # (1 - z) n + z h
        elif mode == "RNN_TANH":
            torch.tanh(g.baddbmm_(h, w_hh_t), out=outs[:, t])
        else:
            torch.clamp_min(g.baddbmm_(h, w_hh_t), 0, out=outs[:, t])
        h = outs[:, t]
    return outs.transpose(1, 2), h.clone(), c, pre, cells, tanh_c, hn


# d/dz of sigmoid and tanh from their outputs, in one pass each (what autograd uses)
_sigmoid_grad = torch.ops.aten.sigmoid_backward.grad_input
_tanh_grad = torch.ops.aten.tanh_backward.grad_input


def _backward(mode: str, reverse: bool, saved, d_out, d_h, d_c):
    x, w_ih, w_hh, out, pre, cells, tanh_c, hn = saved
    outs = out.transpose(1, 2)  # (trials, steps, batch, hidden)
    trials, steps, batch, hidden = outs.shape
    d_out = d_out.transpose(1, 2) if d_out is not None else None
    d_pre = torch.empty_like(pre)  # each step's gate gradients (input side)
    d_gh = torch.empty_like(pre) if mode == "gru" else d_pre  # (recurrent side)
    zero = outs.new_zeros(trials, batch, hidden)
    d_h = d_h.clone() if d_h is not None else zero.clone()
    d_c = d_c.clone() if d_c is not None else zero.clone()
    first = steps - 1 if reverse else 0
    back = 1 if reverse else -1  # from step t to the step before it in time
    for t in range(steps) if reverse else range(steps - 1, -1, -1):
        if d_out is not None:
            d_h += d_out[:, t]
        if mode == "lstm":
            i, f, g, o = pre[:, t].chunk(4, dim=-1)
            c_prev = cells[:, t + back] if t != first else zero
            tc = tanh_c[:, t]
            di, df, dg, do = d_pre[:, t].chunk(4, dim=-1)
            _sigmoid_grad(d_h * tc, o, grad_input=do)
            d_c += torch.ops.aten.tanh_backward(d_h * o, tc)
            _sigmoid_grad(d_c * g, i, grad_input=di)
            _sigmoid_grad(d_c * c_prev, f, grad_input=df)
            _tanh_grad(d_c * i, g, grad_input=dg)
            d_c *= f
            d_h = torch.bmm(d_pre[:, t], w_hh)
        elif mode == "gru":
            h_prev = outs[:, t + back] if t != first else zero
            r, z, n = pre[:, t].chunk(3, dim=-1)
            dr, dz, dn = d_pre[:, t].chunk(3, dim=-1)
            _tanh_grad(d_h * (1 - z), n, grad_input=dn)
            _sigmoid_grad(d_h * (h_prev - n), z, grad_input=dz)
            _sigmoid_grad(dn * hn[:, t], r, grad_input=dr)
            d_gh[:, t, :, : 2 * hidden] = d_pre[:, t, :, : 2 * hidden]
            torch.mul(dn, r, out=d_gh[:, t, :, 2 * hidden :])
            d_h = torch.baddbmm(d_h * z, d_gh[:, t], w_hh)
        else:
            h = outs[:, t]
            if mode == "RNN_TANH":
                _tanh_grad(d_h, h, grad_input=d_pre[:, t])
            else:
                torch.mul(d_h, h > 0, out=d_pre[:, t])
            d_h = torch.bmm(d_pre[:, t], w_hh)
    # the weights' gradients: every step at once
    rows = d_pre.view(trials, steps * batch, -1)
    rows_h = d_gh.view(trials, steps * batch, -1)
    if reverse:
        prev = torch.cat([outs[:, 1:], zero[:, None]], 1)
    else:
        prev = torch.cat([zero[:, None], outs[:, :-1]], 1)
    xt = x.transpose(1, 2).reshape(trials, steps * batch, -1)
    d_w_ih = torch.bmm(rows.transpose(1, 2), xt)
    d_w_hh = torch.bmm(rows_h.transpose(1, 2), prev.view(trials, steps * batch, hidden))
    d_x = torch.bmm(rows, w_ih).view(trials, steps, batch, -1).transpose(1, 2)
    return d_x, d_w_ih, d_w_hh, rows.sum(1), rows_h.sum(1)


KERNELS = ("auto", "batched", "per_trial")
TORCH_RNN = {"lstm": nn.LSTM, "gru": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
_templates: dict[tuple, nn.RNNBase] = {}


def _template(mode: str, inputs: int, hidden: int) -> nn.RNNBase:
    """A one-layer torch RNN of this shape with no weights of its own (meta device): each
    trial's weights go in through functional_call."""
    key = (mode, inputs, hidden)
    if key not in _templates:
        extra = {"nonlinearity": "relu"} if mode == "RNN_RELU" else {}
        rnn = TORCH_RNN[mode](inputs, hidden, batch_first=True, device="meta", **extra)
        _templates[key] = rnn
    return _templates[key]


def _per_trial(mode: str, reverse: bool, x, w_ih, w_hh, b_ih, b_hh):
    """RecurrenceFn's outputs from torch's own layer, called once per trial (autograd records
    those calls, so the backward is torch's too)."""
    rnn = _template(mode, x.shape[-1], w_hh.shape[-1])
    outs, hs, cs = [], [], []
    for i in range(x.shape[0]):
        weights = {"weight_ih_l0": w_ih[i], "weight_hh_l0": w_hh[i]}
        weights.update({"bias_ih_l0": b_ih[i], "bias_hh_l0": b_hh[i]})
        xi = x[i].flip(1) if reverse else x[i]
        out, state = torch.func.functional_call(rnn, weights, (xi,))
        h, c = state if mode == "lstm" else (state, torch.zeros_like(state))
        outs.append(out.flip(1) if reverse else out)
        hs.append(h[0])
        cs.append(c[0])
    none = x.new_empty(x.shape[0], 0)
    return torch.stack(outs), torch.stack(hs), torch.stack(cs), none, none, none, none


class RecurrenceFn(torch.autograd.Function):
    """One direction of one layer, for a stack of trials (a leading trial axis everywhere).
    Outputs: outputs, h_n, c_n, and (not differentiable) what the backward reads."""

    @staticmethod
    def forward(mode, reverse, kernel, x, w_ih, w_hh, b_ih, b_hh):
        return _forward(mode, reverse, x, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mode, reverse, _, x, w_ih, w_hh, _, _ = inputs
        ctx.mode, ctx.reverse = mode, reverse
        out, _, _, pre, cells, tanh_c, hn = output
        ctx.save_for_backward(x, w_ih, w_hh, out, pre, cells, tanh_c, hn)
        ctx.mark_non_differentiable(pre, cells, tanh_c, hn)
        ctx.set_materialize_grads(False)  # no full-size zero gradients for unused outputs

    @staticmethod
    def backward(ctx, d_out, d_h, d_c, *_):
        grads = _backward(ctx.mode, ctx.reverse, ctx.saved_tensors, d_out, d_h, d_c)
        return None, None, None, *grads

    @staticmethod
    def vmap(info, in_dims, mode, reverse, kernel, x, w_ih, w_hh, b_ih, b_hh):
        """Under vmap over trials: the vmapped axis joins the trial axis in front; `kernel`
        picks the batched recurrence or torch's layer per trial."""
        size = info.batch_size

        def front(t, dim):
            t = t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)
            return t.reshape(size * t.shape[1], *t.shape[2:])

        tensors = (x, w_ih, w_hh, b_ih, b_hh)
        args = [front(t, d) for t, d in zip(tensors, in_dims[3:], strict=True)]
        if kernel == "per_trial" or (kernel == "auto" and x.device.type == "cpu"):
            outputs = _per_trial(mode, reverse, *args)
        else:
            outputs = RecurrenceFn.apply(mode, reverse, kernel, *args)
        split = tuple(o.reshape(size, o.shape[0] // size, *o.shape[1:]) for o in outputs)
        return split, (0,) * len(split)


def recurrence(mode: str, reverse: bool, x, w_ih, w_hh, b_ih, b_hh, kernel: str = "batched"):
    """(outputs, h_n, c_n) of one direction of one layer; every tensor has a trial axis.
    `kernel` matters under vmap only (see RecurrenceFn.vmap)."""
    out, h, c, *_ = RecurrenceFn.apply(mode, reverse, kernel, x, w_ih, w_hh, b_ih, b_hh)
    return out, h, c


class TrialRNN(nn.Module):
    """An nn.RNN / nn.LSTM / nn.GRU (batch_first, with biases, no projections) of one trial that
    vmap batches over trials with `kernel` (KERNELS, see RecurrenceFn.vmap). Parameter names and
    layout are torch's; dropout between layers has its rate in a buffer (per trial once
    stacked)."""

    def __init__(self, rnn: nn.RNNBase, kernel: str = "auto"):
        super().__init__()
        self.kernel = kernel
        self.mode = {"LSTM": "lstm", "GRU": "gru"}.get(rnn.mode, rnn.mode)  # RNN_TANH / RNN_RELU
        self.num_layers, self.hidden_size = rnn.num_layers, rnn.hidden_size
        self.directions = 2 if rnn.bidirectional else 1
        for name, param in rnn.named_parameters():
            self.register_parameter(name, nn.Parameter(param.detach().clone()))
        self.register_buffer(DROPOUT_RATE, torch.tensor(float(rnn.dropout)))

    def forward(self, x: torch.Tensor):
        hs, cs = [], []
        for layer in range(self.num_layers):
            if layer > 0:
                x = trial_dropout(x, getattr(self, DROPOUT_RATE), self.training)
            outs = []
            for d in range(self.directions):
                suffix = f"l{layer}" + ("_reverse" if d else "")
                weights = [
                    getattr(self, f"{kind}_{suffix}")[None]  # a trial axis of one
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ]
                out, h, c = recurrence(self.mode, bool(d), x[None], *weights, self.kernel)
                outs.append(out[0])
                hs.append(h[0])
                cs.append(c[0])
            x = torch.cat(outs, dim=-1) if self.directions > 1 else outs[0]
        h_n = torch.stack(hs)
        return (x, (h_n, torch.stack(cs))) if self.mode == "lstm" else (x, h_n)
