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

Two kernels, because what a step costs differs with the layer's size:
- Small layers (H <= bptt.TRANSPOSED_MAX; AG News' LSTM(8) is 512 numbers a gate block) pay for
  the number of calls, ~2-3 us each, not for arithmetic: `_LSTMSmall` runs units x batch (each
  gate block contiguous), takes the input projection inside the Function (autograd nodes around
  it, a linear, a bias add, a gate reordering, cost more than the loop's work at H=8), orders the
  gates (o, i, f, g), torch.nn's rolled by one block, so that one sigmoid covers o, i, f and
  backward forms a step's four gate gradients as one multiply of [dh; dc; dc; dc], and makes
  8 calls a step forward, 5 backward, in one work buffer whose gate views exist once.
- Larger layers pay for arithmetic: at B=16, H=128 the matrix products are ~40 % of the time and
  copies of a step's results cost a pass over memory each, so `_LSTM` keeps torch.nn's batch x
  units layout and writes every step's results in place into preallocated sequence buffers
  (gates (g, i, f, o)). Measured alternatives (recomputing the gates in backward, per-step gate
  views from one split, the units x batch layout) were slower at H=128 and 256.

Masking: a padded step computes its gates but keeps the old state (`torch.where`); backward
multiplies that step's factors by the mask and carries the state's gradient past it unchanged.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnn_core import bptt
from rnn_core.bptt import _autocast_free, _carry, _keep, _Layout, _order, _previous, _steps

# --- larger layers: batch x units, in place into sequence buffers ---------------------------------

class _LSTM(torch.autograd.Function):
    """xp in the layout's form (L x 4H x B or L x B x 4H), gates (g, i, f, o); weight_hh in the
    same gate order."""

    @staticmethod
    @_autocast_free
    def forward(ctx, xp, h0, c0, weight_hh, mask, reverse: bool, layout: _Layout):
        length = xp.shape[0]
        hidden = weight_hh.shape[1]
        gates = torch.empty_like(xp)  # tanh(g), sigmoid(i, f, o) of every step
        g_all, i_all, f_all, o_all = layout.blocks(gates, hidden)
        hs = torch.empty_like(g_all, memory_format=torch.contiguous_format)
        cs, tanh_cs = torch.empty_like(hs), torch.empty_like(hs)
        w_t = weight_hh.t().contiguous()
        ifo = gates.narrow(layout.units, hidden, 3 * hidden)
        xps, gs, g_, i_, f_, o_, ifo_, h_out, c_out, tc_out = _steps(
            xp, gates, g_all, i_all, f_all, o_all, ifo, hs, cs, tanh_cs)
        masks = layout.mask(mask)
        masks = masks.unbind(0) if masks is not None else None
        h, c = layout.state(h0), layout.state(c0)
        h_first, c_first = h, c
        for t in _order(length, reverse):
            layout.recur(xps[t], h, weight_hh, w_t, gs[t])
            g_[t].tanh_()
            ifo_[t].sigmoid_()
            ct, ht = c_out[t], h_out[t]
            torch.mul(f_[t], c, out=ct).addcmul_(i_[t], g_[t])  # c' = f * c + i * g
            torch.mul(o_[t], torch.tanh(ct, out=tc_out[t]), out=ht)  # h' = o * tanh(c')
            if masks is not None:
                torch.where(masks[t], ht, h, out=ht)
                torch.where(masks[t], ct, c, out=ct)
            h, c = ht, ct
        ctx.reverse, ctx.layout = reverse, layout
        ctx.save_for_backward(gates, hs, cs, tanh_cs, h_first, c_first, weight_hh, mask)
        return layout.sequence(hs), layout.batch_major(h), layout.batch_major(c)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_hn, grad_cn):
        gates, hs, cs, tanh_cs, h0, c0, weight_hh, mask = ctx.saved_tensors
        layout = ctx.layout
        length, hidden = gates.shape[0], weight_hh.shape[1]
        g, i, f, o = layout.blocks(gates, hidden)
        mask = layout.mask(mask)
        prev_c = _previous(cs, c0, ctx.reverse)
        # Per-step factors, every step at once:
        #   dc_t   = dL/dc_t (carried c) + dh_t * o (1 - tanh(c)^2)                   (k)
        #   dpre_g = dc * i (1 - g^2), dpre_i = dc * g i (1 - i), dpre_f = dc * c_prev f (1 - f)
        #   dpre_o = dh * tanh(c) o (1 - o)                                            (factors)
        #   dc_{t-1} = dc * f                                                          (carry)
        k = _keep(mask, torch.addcmul(o, o * tanh_cs, tanh_cs, value=-1))
        factors = torch.empty_like(gates)
        fg, fi, ff, fo = layout.blocks(factors, hidden)
        torch.mul(i, torch.addcmul(torch.ones_like(g), g, g, value=-1), out=fg)
        torch.mul(g, torch.addcmul(i, i, i, value=-1), out=fi)
        torch.mul(prev_c, torch.addcmul(f, f, f, value=-1), out=ff)
        torch.mul(tanh_cs, torch.addcmul(o, o, o, value=-1), out=fo)
        if mask is not None:
            factors.mul_(mask)
        carry_c = _carry(mask, f, gates)
        carry_h = _carry(mask, None, gates)
        dgates = torch.empty_like(gates)
        # g, i, f share dc: one broadcast multiply over 3 x H x B (or B x 3 x H) per step.
        gif_f, gif_d = (t.narrow(layout.units, 0, 3 * hidden).unflatten(layout.units, (3, hidden))
                        for t in (factors, dgates))
        d_o_all = layout.blocks(dgates, hidden)[3]
        gifs, gifd, fos, dos, ks, carries_c, dgs = _steps(
            gif_f, gif_d, fo, d_o_all, k, carry_c, dgates)
        grads = layout.from_sequence(grad_hs).contiguous().unbind(0)  # see _LSTMSmall
        carries_h = carry_h.unbind(0) if carry_h is not None else None
        w_t = weight_hh.t().contiguous()
        dh_acc, dc_acc = layout.state(grad_hn), layout.state(grad_cn)
        spread = (lambda d: d) if layout.transposed else (lambda d: d.unsqueeze(1))
        for t in reversed(_order(length, ctx.reverse)):
            dh = dh_acc + grads[t]
            dc = torch.addcmul(dc_acc, dh, ks[t])
            torch.mul(spread(dc), gifs[t], out=gifd[t])
            torch.mul(dh, fos[t], out=dos[t])
            dc_acc = dc * carries_c[t]
            dh_acc = layout.back(dgs[t], weight_hh, w_t,
                                 None if carries_h is None else dh * carries_h[t])
        prev_h = _previous(hs, h0, ctx.reverse)
        grad_w = layout.weight_grad(dgates, prev_h)
        return (dgates, layout.batch_major(dh_acc), layout.batch_major(dc_acc), grad_w,
                None, None, None)




# --- small layers: units x batch, few calls a step -------------------------------------------------


class _LSTMSmall(torch.autograd.Function):
    """Units x batch inside: a step's tensors are 4H x B (gates, order o, i, f, g) and H x B."""

    @staticmethod
    @_autocast_free
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse: bool):
        length, batch, _ = x.shape
        hidden = weight_hh.shape[1]
        # (i, f, g, o) -> (o, i, f, g): roll the rows by one gate block.
        w_ih, w_hh = weight_ih.roll(hidden, 0), weight_hh.roll(hidden, 0)
        bias = (bias_ih + bias_hh).roll(hidden, 0)
        xp = torch.addmm(bias, x.reshape(-1, x.shape[2]), w_ih.t()).view(length, batch, -1)
        work = xp.new_empty(4 * hidden, batch)
        sig, g = work[: 3 * hidden], work[3 * hidden:]
        o, i, f, _ = work.split(hidden)
        # Contiguous: a transposed start would make every step's results transposed too
        # (elementwise ops keep their inputs' strides), and slower.
        h, c = h0.t().contiguous(), c0.t().contiguous()
        xps = xp.transpose(1, 2).unbind(0)
        masks = mask.transpose(1, 2).unbind(0) if mask is not None else None
        gates, cs, hs = [None] * length, [None] * length, [None] * length
        addmm, addcmul, mul, tanh, where = torch.addmm, torch.addcmul, torch.mul, torch.tanh, \
            torch.where
        for t in _order(length, reverse):
            addmm(xps[t], w_hh, h, out=work)
            sig.sigmoid_()
            g.tanh_()
            gates[t] = work.clone()
            c_new = addcmul(mul(f, c), i, g)  # c' = f * c + i * g
            h_new = mul(o, tanh(c_new))  # h' = o * tanh(c')
            if masks is not None:
                c_new, h_new = where(masks[t], c_new, c), where(masks[t], h_new, h)
            cs[t], hs[t] = c_new, h_new
            h, c = h_new, c_new
        gates, cs, hs = torch.stack(gates), torch.stack(cs), torch.stack(hs)
        ctx.reverse = reverse
        ctx.save_for_backward(x, gates, hs, cs, h0, c0, w_ih, w_hh, mask)
        return hs.transpose(1, 2), h.t().clone(), c.t().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_hn, grad_cn):
        x, gates, hs, cs, h0, c0, w_ih, w_hh, mask = ctx.saved_tensors
        length, hidden = gates.shape[0], w_hh.shape[1]
        o, i, f, g = gates.split(hidden, dim=1)
        mask = mask.transpose(1, 2) if mask is not None else None
        tanh_cs = torch.tanh(cs)
        prev_c = _previous(cs, c0.t(), ctx.reverse)
        # Per-step factors, every step at once:
        #   dc_t   = dL/dc_t (carried) + dh_t * o (1 - tanh(c)^2)                         (k)
        #   dpre_o = dh * tanh(c) o (1 - o)
        #   dpre_i = dc * g i (1 - i), dpre_f = dc * c_prev f (1 - f), dpre_g = dc * i (1 - g^2)
        #   dc_{t-1} = dc * f                                                           (carry)
        k = _keep(mask, torch.addcmul(o, o * tanh_cs, tanh_cs, value=-1))
        factors = torch.cat([tanh_cs * torch.addcmul(o, o, o, value=-1),
                             g * torch.addcmul(i, i, i, value=-1),
                             prev_c * torch.addcmul(f, f, f, value=-1),
                             i * torch.addcmul(torch.ones_like(g), g, g, value=-1)], dim=1)
        if mask is not None:
            factors.mul_(mask)
        carry_c = _carry(mask, f, gates)
        carry_h = _carry(mask, None, gates)
        # One contiguous copy: a loss's gradient often arrives expanded (stride 0), which sends
        # every per-step addmm below down a slow path.
        grads = grad_hs.transpose(1, 2).contiguous().unbind(0)
        facs, ks, cfs = factors.unbind(0), k.unbind(0), carry_c.unbind(0)
        carries_h = carry_h.unbind(0) if carry_h is not None else None
        steps = list(reversed(_order(length, ctx.reverse)))
        dgates = [None] * length
        w_t = w_hh.t().contiguous()
        addmm, addcmul, cat, mul = torch.addmm, torch.addcmul, torch.cat, torch.mul
        dh = (grad_hn.t() + grads[steps[0]]).contiguous()  # contiguous: see forward
        dc_acc = grad_cn.t().contiguous()
        for n, t in enumerate(steps):
            dc = addcmul(dc_acc, dh, ks[t])
            dg = mul(cat((dh, dc, dc, dc)), facs[t])  # o takes dh; i, f, g take dc
            dgates[t] = dg
            dc_acc = mul(dc, cfs[t])
            base = grads[steps[n + 1]] if n + 1 < length else None
            if carries_h is not None:
                kept = dh * carries_h[t]
                base = kept if base is None else base + kept
            dh = torch.mm(w_t, dg) if base is None else addmm(base, w_t, dg)
        # Every step's gate gradients side by side, 4H x (L*B): steps in time order, batch
        # within a step, as x.reshape(L*B, D) is.
        flat = cat(dgates, dim=1)
        return _small_grads(ctx, x, flat, hs, h0, w_ih, dh.t(), dc_acc.t())


def _small_grads(ctx, x, flat, hs, h0, w_ih, grad_h0, grad_c0):
    """_LSTMSmall's gradients in its forward's argument order, the gate blocks rolled back from
    (o, i, f, g) to torch.nn's (i, f, g, o). flat: 4H x (L*B)."""
    hidden = hs.shape[1]
    need = ctx.needs_input_grad
    rows = flat.t()  # (L*B) x 4H
    grad_x = grad_w_ih = grad_w_hh = grad_b = None
    if need[0]:
        grad_x = torch.mm(rows, w_ih).view(*x.shape[:2], -1)
    if need[3]:
        grad_w_ih = flat.mm(x.reshape(-1, x.shape[2])).roll(-hidden, 0)
    if need[4]:
        prev = _previous(hs, h0.t(), ctx.reverse).transpose(1, 2)  # L x B x H
        grad_w_hh = flat.mm(prev.reshape(-1, hidden)).roll(-hidden, 0)
    if need[5] or need[6]:
        grad_b = flat.sum(1).roll(-hidden, 0)
    return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_b, None, None


_GIFO: dict[tuple[int, torch.device], torch.Tensor] = {}


def _gifo(hidden: int, device: torch.device) -> torch.Tensor:
    """Row indices that reorder torch.nn's (i, f, g, o) gate blocks as (g, i, f, o)."""
    key = (hidden, device)
    if key not in _GIFO:
        _GIFO[key] = torch.cat([torch.arange(2 * hidden, 3 * hidden), torch.arange(2 * hidden),
                                torch.arange(3 * hidden, 4 * hidden)]).to(device)
    return _GIFO[key]




def lstm_layer(x, state, weight_ih, weight_hh, bias_ih, bias_hh, mask=None,
               reverse: bool = False):
    """One LSTM layer-direction from its input x; state (h0, c0). -> (hs, (h_n, c_n))."""
    h0, c0 = state
    hidden = weight_hh.shape[1]
    if hidden <= bptt.TRANSPOSED_MAX:
        hs, h_n, c_n = _LSTMSmall.apply(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, mask,
                                        reverse)
    else:  # torch.nn's layout; the gates reordered (g, i, f, o), autograd maps the gradients back
        layout = _Layout(transposed=False)
        order = _gifo(hidden, weight_hh.device)
        xp = layout.project(x, weight_ih[order], (bias_ih + bias_hh)[order])
        hs, h_n, c_n = _LSTM.apply(xp, h0, c0, weight_hh[order], mask, reverse, layout)
    return hs, (h_n, c_n)
