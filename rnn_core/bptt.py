"""Backpropagation through time written by hand for the built-in cells: one autograd node per
layer-direction instead of ~10 per step, which is what made the scratch backend slow.

    hs, h_n = rnn_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, "tanh", mask, reverse)
    hs, h_n = gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, mask, reverse)
    hs, h_n = rnn_sequence(xp, h0, weight_hh, "sigmoid")    # an already projected input (Mikolov)

    x          L x B x D    the layer's input (any strides)
    weights    torch.nn's names, shapes and gate order (rnn; gru r, z, n)
    h0         B x H        initial state
    mask       None, or L x B x 1 bool: where False (padding) the state keeps its value
    -> hs L x B x H (the state after every step, in time order), the final state

The LSTM's kernels, on the same helpers and contract, are `rnn_core.bptt_lstm`.

The formulas are exactly `rnn_core.cells.rnn_recur / gru_recur` (torch.nn's), so
`tests/test_parity.py` holds them to torch.nn's outputs and gradients and
checks every gradient with `torch.autograd.gradcheck` in float64.

How it is fast:
- The input's part of every gate is one matmul over all L x B steps (autograd handles it; its
  backward is one matmul for W_ih too). The recurrence is one `torch.autograd.Function`.
- Forward runs without autograd into preallocated buffers: one addmm and ~6 in-place elementwise
  ops per step.
- Backward first computes, for all steps at once, the factors that turn the two recursive
  gradient dL/dh_t into each step's gate gradients; its loop is then
  ~5 elementwise ops and one matmul per step. The gradient of W_hh is one (L*B x G*H)^T (L*B x H)
  matmul, that of b_hh one sum.
- Layout: small layers (H <= TRANSPOSED_MAX) run transposed inside (units x batch), so that each
  gate is a contiguous block and a step's elementwise ops cost a third as much (they dominate
  there); larger ones keep torch.nn's batch x units layout, where a layout change would cost more
  than it saves.

Masking: a padded step computes its gates but keeps the old state (`torch.where`); backward
multiplies that step's factors by the mask and carries the state's gradient past it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

ACTIVATIONS = ("tanh", "relu", "sigmoid")
TRANSPOSED_MAX = 32  # hidden sizes up to this run in the units x batch layout (measured: H=8..32)


def _order(length: int, reverse: bool) -> range:
    return range(length - 1, -1, -1) if reverse else range(length)


def _previous(hs: torch.Tensor, h0: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The state each step started from (hs' layout, steps first): h0 then hs shifted."""
    if reverse:
        return torch.cat([hs[1:], h0.unsqueeze(0)])
    return torch.cat([h0.unsqueeze(0), hs[:-1]])


def _keep(mask: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """values * mask: a padded step contributes nothing of its own."""
    return values if mask is None else values * mask


def _carry(mask: torch.Tensor | None, factor: torch.Tensor | None, like: torch.Tensor):
    """How a step passes dL/dstate back to the previous state besides its matmul: `factor`
    (z for the GRU, f for the LSTM's c; None = 0) on real steps, 1 on padded ones."""
    if mask is None:
        return factor
    m = mask.to(like.dtype)
    return (1 - m) if factor is None else factor * m + (1 - m)


def _steps(*tensors: torch.Tensor):
    """Each tensor's per-step views (one `unbind` each: cheaper than indexing in the loop)."""
    return [t.unbind(0) for t in tensors]


class _Layout:
    """Where the units and the batch sit in a step's tensors: batch x units (torch.nn's) or
    units x batch (transposed). Steps are always the first dimension of a sequence tensor."""

    def __init__(self, transposed: bool):
        self.transposed = transposed
        self.units = 1 if transposed else 2  # the units' dim in an L x ... x ... tensor

    def project(self, x, weight, bias):
        """x L x B x D -> L x G x B (transposed, contiguous) or L x B x G."""
        if self.transposed:
            return torch.baddbmm(bias.view(1, -1, 1), weight.expand(x.shape[0], -1, -1),
                                 x.transpose(1, 2))
        return F.linear(x, weight, bias)

    def state(self, h):
        """B x H -> this layout's step state (a contiguous copy: it is written in place)."""
        return h.t().contiguous() if self.transposed else h.contiguous()

    def batch_major(self, h):
        """Back to B x H (a copy: the result is returned to autograd)."""
        return h.t().clone() if self.transposed else h.clone()

    def sequence(self, hs):
        """L x (steps' layout) -> L x B x H (a view)."""
        return hs.transpose(1, 2) if self.transposed else hs

    def from_sequence(self, grad):
        """L x B x H -> L x (steps' layout) (a view)."""
        return grad.transpose(1, 2) if self.transposed else grad

    def mask(self, mask):
        return None if mask is None else (mask.transpose(1, 2) if self.transposed else mask)

    def blocks(self, t, size: int):
        """Split a sequence tensor into gate blocks of `size` units (views)."""
        return t.split(size, dim=self.units)

    def recur(self, xp_t, h, weight_hh, w_t, out):
        """out = xp_t + (h W_hh^T, in this layout)."""
        if self.transposed:
            return torch.addmm(xp_t, weight_hh, h, out=out)
        return torch.addmm(xp_t, h, w_t, out=out)

    def back(self, dg, weight_hh, w_t, base=None):
        """dL/dh_{t-1} through the matmul: dg W_hh (+ base)."""
        if self.transposed:
            return torch.mm(w_t, dg) if base is None else torch.addmm(base, w_t, dg)
        return torch.mm(dg, weight_hh) if base is None else torch.addmm(base, dg, weight_hh)

    def weight_grad(self, dgates, prev):
        """sum over steps and batch of dpre^T h_prev: G x H."""
        rows, hidden = dgates.shape[self.units], prev.shape[self.units]
        if self.transposed:
            return dgates.transpose(0, 1).reshape(rows, -1).mm(
                prev.transpose(0, 1).reshape(hidden, -1).t())
        return dgates.reshape(-1, rows).t().mm(prev.reshape(-1, hidden))

    def bias_grad(self, dgates):
        return dgates.sum((0, 2) if self.transposed else (0, 1))


def _layout(hidden: int) -> _Layout:
    return _Layout(hidden <= TRANSPOSED_MAX)


def _autocast_free(fn):
    """Under CUDA autocast the inputs arrive in lower precision: run the kernel in float32."""
    return torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)(fn)


# --- vanilla RNN: h' = act(xp + h W_hh^T) -------------------------------------------------------


class _RNN(torch.autograd.Function):
    """xp L x B x H (batch x units; no gate blocks, so no layout change is worth it)."""

    @staticmethod
    @_autocast_free
    def forward(ctx, xp, h0, weight_hh, activation: str, mask, reverse: bool):
        hs = torch.empty_like(xp)
        w_t = weight_hh.t().contiguous()
        act = getattr(torch.Tensor, f"{activation}_")
        xps, out = _steps(xp, hs)
        masks = mask.unbind(0) if mask is not None else None
        h = h0
        for t in _order(len(xps), reverse):
            ht = out[t]
            act(torch.addmm(xps[t], h, w_t, out=ht))
            if masks is not None:
                torch.where(masks[t], ht, h, out=ht)
            h = ht
        ctx.activation, ctx.reverse = activation, reverse
        ctx.save_for_backward(hs, h0, weight_hh, mask)
        return hs, h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_hn):
        hs, h0, weight_hh, mask = ctx.saved_tensors
        if ctx.activation == "tanh":
            slope = 1 - hs * hs
        elif ctx.activation == "sigmoid":
            slope = hs - hs * hs
        else:
            slope = (hs > 0).to(hs.dtype)
        slope = _keep(mask, slope)
        carry = _carry(mask, None, hs)
        dpre = torch.empty_like(hs)
        grads, slopes, dpres = _steps(grad_hs, slope, dpre)
        carries = carry.unbind(0) if carry is not None else None
        dh_acc = grad_hn
        for t in reversed(_order(len(grads), ctx.reverse)):
            dh = dh_acc + grads[t]
            torch.mul(dh, slopes[t], out=dpres[t])
            dh_acc = (torch.mm(dpres[t], weight_hh) if carries is None
                      else torch.addmm(dh * carries[t], dpres[t], weight_hh))
        hidden = hs.shape[-1]
        prev = _previous(hs, h0, ctx.reverse)
        grad_w = dpre.reshape(-1, hidden).t().mm(prev.reshape(-1, hidden))
        return dpre, dh_acc, grad_w, None, None, None


def rnn_sequence(xp, h0, weight_hh, activation: str = "tanh", mask=None, reverse: bool = False):
    """Vanilla RNN over an already projected input xp (L x B x H, every bias in it);
    activation tanh, relu or sigmoid (Mikolov's). -> (hs L x B x H, h_n B x H)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {ACTIVATIONS}")
    return _RNN.apply(xp, h0, weight_hh, activation, mask, reverse)


def rnn_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, activation: str = "tanh",
              mask=None, reverse: bool = False):
    """One RNN layer-direction from its input x (both biases folded into the projection)."""
    return rnn_sequence(F.linear(x, weight_ih, bias_ih + bias_hh), h0, weight_hh, activation,
                        mask, reverse)


# --- GRU: torch.nn's formula, gates (r, z, n); b_hh stays inside r * (W_hn h + b_hn) -----------


class _GRU(torch.autograd.Function):
    """xp in the layout's form (L x 3H x B or L x B x 3H), gates (r, z, n), b_hh apart."""

    @staticmethod
    @_autocast_free
    def forward(ctx, xp, h0, weight_hh, bias_hh, mask, reverse: bool, layout: _Layout):
        length = xp.shape[0]
        hidden = weight_hh.shape[1]
        ghs = torch.empty_like(xp)  # h W_hh^T + b_hh of every step (n's part is needed later)
        xp_rz, xp_n = xp.narrow(layout.units, 0, 2 * hidden), layout.blocks(xp, hidden)[2]
        gh_rz, gh_n = ghs.narrow(layout.units, 0, 2 * hidden), layout.blocks(ghs, hidden)[2]
        rzs = torch.empty_like(gh_rz, memory_format=torch.contiguous_format)  # sigmoid(r, z)
        r_all, z_all = layout.blocks(rzs, hidden)
        ns = torch.empty_like(gh_n, memory_format=torch.contiguous_format)
        hs = torch.empty_like(ns)
        bias = bias_hh.view(-1, 1) if layout.transposed else bias_hh
        w_t = weight_hh.t().contiguous()
        xrz, xn, grz, gn, r_, z_, gh_out, rz_out, n_out, h_out = _steps(
            xp_rz, xp_n, gh_rz, gh_n, r_all, z_all, ghs, rzs, ns, hs)
        masks = layout.mask(mask)
        masks = masks.unbind(0) if masks is not None else None
        h = layout.state(h0)
        h_first = h
        for t in _order(length, reverse):
            if layout.transposed:
                torch.addmm(bias, weight_hh, h, out=gh_out[t])
            else:
                torch.addmm(bias, h, w_t, out=gh_out[t])
            torch.add(xrz[t], grz[t], out=rz_out[t]).sigmoid_()
            torch.addcmul(xn[t], r_[t], gn[t], out=n_out[t]).tanh_()
            ht = h_out[t]
            torch.lerp(n_out[t], h, z_[t], out=ht)  # n + z * (h - n)
            if masks is not None:
                torch.where(masks[t], ht, h, out=ht)
            h = ht
        ctx.reverse, ctx.layout = reverse, layout
        ctx.save_for_backward(ghs, rzs, ns, hs, h_first, weight_hh, mask)
        return layout.sequence(hs), layout.batch_major(h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_hn):
        ghs, rzs, ns, hs, h0, weight_hh, mask = ctx.saved_tensors
        layout = ctx.layout
        length, hidden = ghs.shape[0], weight_hh.shape[1]
        r, z = layout.blocks(rzs, hidden)
        gh_n = layout.blocks(ghs, hidden)[2]
        mask = layout.mask(mask)
        prev_h = _previous(hs, h0, ctx.reverse)
        # Per-step factors, every step at once:
        #   dpre_n = dh * (1-z)(1-n^2)            dxp_n = dpre_n, dgh_n = dpre_n * r
        #   dpre_r = dpre_n * gh_n r(1-r)         dpre_z = dh * (h_prev - n) z(1-z)
        #   dh_{t-1} = dh * z + dgh W_hh          (dgh = [dpre_r, dpre_z, dgh_n])
        a_n = _keep(mask, (1 - z) * torch.addcmul(torch.ones_like(ns), ns, ns, value=-1))
        a_r = gh_n * torch.addcmul(r, r, r, value=-1)
        a_z = _keep(mask, (prev_h - ns) * torch.addcmul(z, z, z, value=-1))
        carry = _carry(mask, z, hs)
        dgh = torch.empty_like(ghs)
        dpre_n = torch.empty_like(hs)
        dgh_r, dgh_z, dgh_n = layout.blocks(dgh, hidden)
        dr, dz, dgn, an, ar, az, rs, carries, dgs, dns = _steps(
            dgh_r, dgh_z, dgh_n, a_n, a_r, a_z, r, carry, dgh, dpre_n)
        grads = layout.from_sequence(grad_hs).unbind(0)
        w_t = weight_hh.t().contiguous()
        dh_acc = layout.state(grad_hn)
        for t in reversed(_order(length, ctx.reverse)):
            dh = dh_acc + grads[t]
            dn = torch.mul(dh, an[t], out=dns[t])
            torch.mul(dn, ar[t], out=dr[t])
            torch.mul(dh, az[t], out=dz[t])
            torch.mul(dn, rs[t], out=dgn[t])
            dh_acc = layout.back(dgs[t], weight_hh, w_t, dh * carries[t])
        dxp = torch.cat([dgh.narrow(layout.units, 0, 2 * hidden), dpre_n], dim=layout.units)
        grad_w = layout.weight_grad(dgh, prev_h)
        return (dxp, layout.batch_major(dh_acc), grad_w, layout.bias_grad(dgh), None, None,
                None)


def gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, mask=None, reverse: bool = False):
    """One GRU layer-direction from its input x (b_hh stays inside the recurrence)."""
    layout = _layout(weight_hh.shape[1])
    xp = layout.project(x, weight_ih, bias_ih)
    return _GRU.apply(xp, h0, weight_hh, bias_hh, mask, reverse, layout)
