"""The LSTM layer's backpropagation through time written by hand, one autograd node per
layer-direction: the same contract as `rnn_core.bptt`'s kernels.

    hs, (h_n, c_n) = lstm_layer(x, (h0, c0), weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse)

    x          L x B x D    the layer's input (any strides)
    weights    torch.nn's names, shapes and gate order (i, f, g, o)
    h0, c0     B x H        initial state
    mask       None, or L x B x 1 bool: where False (padding) the state keeps its value
    -> hs L x B x H (the state after every step, in time order), (h_n, c_n) B x H

The formula is `rnn_core.cells.lstm_recur` (torch.nn's); `tests/test_parity.py` holds both
kernels to torch.nn's outputs and gradients and checks every gradient with gradcheck in float64.

What a step costs, and why the kernels look as they do (measured at AG News' LSTM(8) and the
vanishing study's LSTM(128), one thread):
- One sigmoid for the four gates. tanh(z) = 2 sigmoid(2z) - 1, so with the g rows of the
  weights and bias doubled, a step's gate pre-activations go through one sigmoid and
  c' = f c + i (2 s_g - 1). torch's CPU tanh costs ~3x a sigmoid per element, and one call over
  the contiguous 4H block replaces two over strided views (at H=128: 14 us against 28 us a
  step). g itself is recovered for backward in one pass after the loop.
- The input's part of every gate is one matmul over all L x B steps, inside the Function, into
  the buffer that then holds the gates; each step adds h W_hh^T to its slice in place (an
  in-place addmm skips the copy of its input an `out=` addmm makes: 3.5 against 6 us at H=8).
  Backward likewise adds each step's dg W_hh into the incoming gradient of the step before, a
  copy the kernel owns.
- Gradients of both weights, both biases and x are one matmul (or sum) each over the stacked
  gate gradients, after the loop.
- Small layers (H <= bptt.TRANSPOSED_MAX) pay for the number of calls, ~2-4 us each, not for
  arithmetic: `_LSTMSmall` runs units x batch, so each gate block of a step is contiguous and
  backward forms a step's four gate gradients as one multiply of [dc; dc; dc; dh]. Larger layers
  (`_LSTM`) keep torch.nn's batch x units layout, where a layout change costs more than it
  saves, and write every step's results into preallocated sequence buffers.

Masking: a padded step computes its gates but keeps the old state (`torch.where`); backward
multiplies that step's factors by the mask and carries the state's gradient past it unchanged.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnn_core import bptt
from rnn_core.bptt import _autocast_free, _carry, _order, _previous, _steps


def _g_doubled(weight_ih, weight_hh, bias_ih, bias_hh):
    """The weights (4H x D, 4H x H) and the summed bias (4H) with the g gate's rows doubled,
    so that sigmoid of a step's pre-activations gives (tanh(g) + 1) / 2 for g."""
    hidden = weight_hh.shape[1]
    scale = torch.ones(4 * hidden, 1, dtype=weight_hh.dtype, device=weight_hh.device)
    scale[2 * hidden: 3 * hidden] = 2
    return weight_ih * scale, weight_hh * scale, (bias_ih + bias_hh) * scale.squeeze(1)


def _factors(gates, tanh_cs, prev_c, mask, dim: int):
    """Per-step factors of the gate gradients, every step at once, gate blocks along `dim`:

        dc_t     = dL/dc_t (carried) + dh_t * o (1 - tanh(c)^2)                          (k)
        dpre_i   = dc * g i (1 - i),  dpre_f = dc * c_prev f (1 - f),  dpre_g = dc * i (1 - g^2)
        dpre_o   = dh * tanh(c) o (1 - o)
        dc_{t-1} = dc * f                                                            (carry)
    -> k, factors (shaped as gates: factor_i, factor_f, factor_g, factor_o), both zero on
    padded steps."""
    i, f, g, o = gates.split(tanh_cs.shape[dim], dim)
    factors = torch.empty_like(gates)
    fi, ff, fg, fo = factors.split(tanh_cs.shape[dim], dim)
    torch.mul(g, torch.addcmul(i, i, i, value=-1), out=fi)
    torch.mul(prev_c, torch.addcmul(f, f, f, value=-1), out=ff)
    torch.addcmul(i, i * g, g, value=-1, out=fg)
    torch.mul(tanh_cs, torch.addcmul(o, o, o, value=-1), out=fo)
    k = torch.addcmul(o, o * tanh_cs, tanh_cs, value=-1)
    if mask is not None:
        factors.mul_(mask)
        k.mul_(mask)
    return k, factors


def _weight_grads(ctx, x, rows, prev_h, weight_ih):
    """Gradients of x, weight_ih, weight_hh and the biases from every step's gate gradients.
    rows: (L*B) x 4H, steps in time order and the batch within a step (x.reshape(L*B, D)'s
    order); prev_h: L*B x H, the state each step started from, in the same order."""
    need = ctx.needs_input_grad
    grad_x = grad_w_ih = grad_w_hh = grad_b = None
    if need[0]:
        grad_x = torch.mm(rows, weight_ih).view(*x.shape[:2], -1)
    # (x^T rows)^T rather than rows^T x: the same numbers, and MKL's kernel for this
    # orientation is faster here (measured at L*B = 1600: 1.0 against 1.7 ms for D=32, 4.0
    # against 4.5 ms for H=128); the transposed result is a view, autograd lays it out.
    if need[3]:
        grad_w_ih = x.reshape(-1, x.shape[2]).t().mm(rows).t()
    if need[4]:
        grad_w_hh = prev_h.t().mm(rows).t()
    if need[5] or need[6]:
        grad_b = rows.sum(0)
    return grad_x, grad_w_ih, grad_w_hh, grad_b


# --- larger layers: batch x units, in place into sequence buffers ---------------------------------

class _LSTM(torch.autograd.Function):
    """Steps are B x 4H (gates i, f, g, o) and B x H."""

    @staticmethod
    @_autocast_free
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse: bool):
        length, batch, _ = x.shape
        hidden = weight_hh.shape[1]
        w_ih, w_hh, bias = _g_doubled(weight_ih, weight_hh, bias_ih, bias_hh)
        w_t = w_hh.t()  # H x 4H (a view: the layout the benchmark measured)
        gates = torch.addmm(bias, x.reshape(-1, x.shape[2]), w_ih.t()).view(
            length, batch, 4 * hidden)
        i_all, f_all, g_all, o_all = gates.split(hidden, dim=2)
        hs = x.new_empty(length, batch, hidden)
        cs, tanh_cs = torch.empty_like(hs), torch.empty_like(hs)
        gs, i_, f_, g_, o_, h_out, c_out, tc_out = _steps(
            gates, i_all, f_all, g_all, o_all, hs, cs, tanh_cs)
        masks = mask.unbind(0) if mask is not None else None
        h, c = h0, c0
        mul, tanh, where = torch.mul, torch.tanh, torch.where
        for t in _order(length, reverse):
            gt = gs[t]
            gt.addmm_(h, w_t).sigmoid_()  # i, f, (g + 1) / 2, o
            ct, ht = c_out[t], h_out[t]
            mul(f_[t], c, out=ct).sub_(i_[t]).addcmul_(i_[t], g_[t], value=2)  # c' = f c + i g
            mul(o_[t], tanh(ct, out=tc_out[t]), out=ht)  # h' = o tanh(c')
            if masks is not None:
                where(masks[t], ht, h, out=ht)
                where(masks[t], ct, c, out=ct)
            h, c = ht, ct
        g_all.mul_(2).sub_(1)  # tanh of g's pre-activation, for backward
        ctx.reverse = reverse
        ctx.save_for_backward(x, gates, hs, cs, tanh_cs, h0, c0, weight_ih, weight_hh, mask)
        return hs, h.clone(), c.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_hn, grad_cn):
        x, gates, hs, cs, tanh_cs, h0, c0, weight_ih, weight_hh, mask = ctx.saved_tensors
        length, _, hidden = hs.shape
        k, factors = _factors(gates, tanh_cs, _previous(cs, c0, ctx.reverse), mask, dim=2)
        carry_c = _carry(mask, gates[..., hidden: 2 * hidden], gates)
        carry_h = _carry(mask, None, gates)
        dgates = torch.empty_like(gates)
        # i, f, g share dc: one broadcast multiply over B x 3 x H a step.
        ifg_f, ifg_d = (t[..., : 3 * hidden].unflatten(2, (3, hidden)) for t in (factors, dgates))
        ifg_fs, ifg_ds, o_fs, o_ds, ks, carries_c, dgs = _steps(
            ifg_f, ifg_d, factors[..., 3 * hidden:], dgates[..., 3 * hidden:], k, carry_c, dgates)
        carries_h = carry_h.unbind(0) if carry_h is not None else None
        # The kernel's own copy of the incoming gradient: each step adds its matmul into the
        # step before in place. Contiguous: a loss's gradient often arrives expanded (stride 0).
        grads = grad_hs.clone(memory_format=torch.contiguous_format).unbind(0)
        steps = list(reversed(_order(length, ctx.reverse)))
        mul, addcmul = torch.mul, torch.addcmul
        dh, dc_acc = grads[steps[0]].add_(grad_hn), grad_cn
        for n, t in enumerate(steps):
            dc = addcmul(dc_acc, dh, ks[t])
            mul(dc.unsqueeze(1), ifg_fs[t], out=ifg_ds[t])
            mul(dh, o_fs[t], out=o_ds[t])
            dc_acc = mul(dc, carries_c[t])
            nxt = grads[steps[n + 1]] if n + 1 < length else torch.zeros_like(dh)
            if carries_h is not None:
                nxt.addcmul_(dh, carries_h[t])
            dh = nxt.addmm_(dgs[t], weight_hh)
        prev_h = _previous(hs, h0, ctx.reverse).reshape(-1, hidden)
        grad_x, grad_w_ih, grad_w_hh, grad_b = _weight_grads(
            ctx, x, dgates.view(-1, 4 * hidden), prev_h, weight_ih)
        return grad_x, dh, dc_acc, grad_w_ih, grad_w_hh, grad_b, grad_b, None, None


# --- small layers: units x batch, few calls a step -------------------------------------------------

class _LSTMSmall(torch.autograd.Function):
    """Units x batch inside: a step's tensors are 4H x B (gates i, f, g, o) and H x B."""

    @staticmethod
    @_autocast_free
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse: bool):
        length = x.shape[0]
        hidden = weight_hh.shape[1]
        w_ih, w_hh, bias = _g_doubled(weight_ih, weight_hh, bias_ih, bias_hh)
        # Every step's input part, L x 4H x B; each step's slice then becomes its gates.
        gates = torch.baddbmm(bias.view(1, -1, 1), w_ih.expand(length, -1, -1), x.transpose(1, 2))
        gs = gates.unbind(0)
        i_all, f_all, g_all, o_all = gates.split(hidden, dim=1)
        i_, f_, g_, o_ = _steps(i_all, f_all, g_all, o_all)
        # Contiguous: a transposed start would make every step's results transposed too
        # (elementwise ops keep their inputs' strides), and slower.
        h, c = h0.t().contiguous(), c0.t().contiguous()
        masks = mask.transpose(1, 2).unbind(0) if mask is not None else None
        cs, hs = [None] * length, [None] * length
        mul, tanh, where = torch.mul, torch.tanh, torch.where
        for t in _order(length, reverse):
            gs[t].addmm_(w_hh, h).sigmoid_()  # i, f, (g + 1) / 2, o
            c_new = mul(f_[t], c).sub_(i_[t]).addcmul_(i_[t], g_[t], value=2)  # f c + i g
            h_new = mul(o_[t], tanh(c_new))  # h' = o tanh(c')
            if masks is not None:
                c_new, h_new = where(masks[t], c_new, c), where(masks[t], h_new, h)
            cs[t], hs[t] = c_new, h_new
            h, c = h_new, c_new
        g_all.mul_(2).sub_(1)  # tanh of g's pre-activation, for backward
        cs, hs = torch.stack(cs), torch.stack(hs)
        ctx.reverse = reverse
        ctx.save_for_backward(x, gates, hs, cs, h0, c0, weight_ih, weight_hh, mask)
        return hs.transpose(1, 2), h.t().clone(), c.t().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_hn, grad_cn):
        x, gates, hs, cs, h0, c0, weight_ih, weight_hh, mask = ctx.saved_tensors
        length, hidden = gates.shape[0], weight_hh.shape[1]
        mask = mask.transpose(1, 2) if mask is not None else None
        k, factors = _factors(gates, torch.tanh(cs), _previous(cs, c0.t(), ctx.reverse), mask,
                              dim=1)
        carry_c = _carry(mask, gates[:, hidden: 2 * hidden], gates)
        carry_h = _carry(mask, None, gates)
        # The kernel's own contiguous copy of the incoming gradient (see _LSTM.backward).
        grads = grad_hs.transpose(1, 2).clone(memory_format=torch.contiguous_format).unbind(0)
        facs, ks, cfs = factors.unbind(0), k.unbind(0), carry_c.unbind(0)
        carries_h = carry_h.unbind(0) if carry_h is not None else None
        steps = list(reversed(_order(length, ctx.reverse)))
        dgates = [None] * length
        w_t = weight_hh.t().contiguous()
        addcmul, cat, mul = torch.addcmul, torch.cat, torch.mul
        dh = grads[steps[0]].add_(grad_hn.t())
        dc_acc = grad_cn.t().contiguous()
        for n, t in enumerate(steps):
            dc = addcmul(dc_acc, dh, ks[t])
            dg = mul(cat((dc, dc, dc, dh)), facs[t])  # i, f, g take dc; o takes dh
            dgates[t] = dg
            dc_acc = mul(dc, cfs[t])
            nxt = grads[steps[n + 1]] if n + 1 < length else torch.zeros_like(dh)
            if carries_h is not None:
                nxt.addcmul_(dh, carries_h[t])
            dh = nxt.addmm_(w_t, dg)
        # Every step's gate gradients side by side, 4H x (L*B): steps in time order, batch
        # within a step, as x.reshape(L*B, D) is.
        rows = cat(dgates, dim=1).t()
        prev_h = _previous(hs, h0.t(), ctx.reverse).transpose(1, 2).reshape(-1, hidden)
        grad_x, grad_w_ih, grad_w_hh, grad_b = _weight_grads(ctx, x, rows, prev_h, weight_ih)
        return grad_x, dh.t(), dc_acc.t(), grad_w_ih, grad_w_hh, grad_b, grad_b, None, None


def lstm_layer(x, state, weight_ih, weight_hh, bias_ih, bias_hh, mask=None,
               reverse: bool = False):
    """One LSTM layer-direction from its input x; state (h0, c0). -> (hs, (h_n, c_n))."""
    h0, c0 = state
    kernel = _LSTMSmall if weight_hh.shape[1] <= bptt.TRANSPOSED_MAX else _LSTM
    hs, h_n, c_n = kernel.apply(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse)
    return hs, (h_n, c_n)
