"""Synaptic Intelligence (Zenke et al. 2017): the importance of a parameter is its share of
the loss decrease along the training path, w = sum_k -g_k * (theta_{k+1} - theta_k), divided by
(its total change over the task)^2 + ``xi`` (default 1e-3); importances add up over tasks.
The penalty, anchor and checkpointed state are ``ewc``'s (importance in place of the Fisher),
weighted by ``weight`` (default 1.0); SI needs no extra passes, so no compute is set aside.
Gradients are read by parameter hooks when the backward pass produces them."""
from __future__ import annotations

import torch

from training.methods.ewc import EWC, _named


class SI(EWC):
    name = "si"

    def __init__(self, options=None):
        super().__init__({"weight": 1.0, **(options or {})})
        self._hooks: list = []
        self._grad: dict[str, torch.Tensor] = {}
        self._prev: dict[str, torch.Tensor] = {}
        self._start: dict[str, torch.Tensor] = {}
        self._path: dict[str, torch.Tensor] = {}

    def overhead_samples(self, t, budget):
        return 0

    def begin_step(self, ctx, model):
        self._remove_hooks()
        params = _named(model)
        self._start = {n: p.detach().clone() for n, p in params}
        self._prev = {n: p.detach().clone() for n, p in params}
        self._path = {n: torch.zeros_like(p) for n, p in params}
        self._grad = {}
        for n, p in params:
            self._hooks.append(p.register_hook(lambda g, n=n: self._grad.__setitem__(n, g.detach().clone())))

    def _accumulate(self, model):
        with torch.no_grad():
            for n, p in _named(model):
                if n in self._grad and n in self._prev:
                    self._path[n] -= self._grad[n] * (p.detach() - self._prev[n])
                    self._prev[n] = p.detach().clone()
        self._grad = {}

    def loss(self, ctx, model, images, tokens, ids):
        self._accumulate(model)  # the previous iteration's update is done: add its path term
        return super().loss(ctx, model, images, tokens, ids)

    def end_step(self, ctx, model, batches=None):
        self._accumulate(model)
        self._remove_hooks()
        xi = self.option("xi", 1e-3)
        with torch.no_grad():
            for n, p in _named(model):
                if n not in self._path:
                    continue
                omega = (self._path[n] / ((p.detach() - self._start[n]) ** 2 + xi)).clamp(min=0)
                self.fisher[n] = self.fisher.get(n, torch.zeros_like(omega)) + omega
            self.anchor = {n: p.detach().clone() for n, p in _named(model)}
        self._prev, self._start, self._path = {}, {}, {}

    def _remove_hooks(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []
