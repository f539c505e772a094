"""Reference answers computed the way the original server computed them.

The original server explained a text with Captum's
``LayerIntegratedGradients`` on the model's own forward, then ran the
``intermediate-gradients`` package's second pass over the same path for the
per-step gradients, step sizes and intermediates. :class:`OriginalRecipe`
does both; :func:`captum_reference` is its integrated-gradients half, the
oracle our engine's tests compare against.

Token-id baselines (pad/unk/period) go straight through Captum as baseline
ids. Tensor baselines (zero/rand-*) live in the embedding output space, which
Captum's API cannot take directly, so a :class:`Swap` module sits right after
the embedding layer, and a marker baseline id (-1) makes it emit the tensor
baseline. Captum attributes to ``Swap``'s output: the embedding output for
the input, the tensor baseline for the baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from captum.attr import LayerIntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters

from intgrads_zmq.models.base import ClassifierAdapter, EncodedText, logits_of

MARKER = -1


class Swap(torch.nn.Module):
    """Identity for real ids; the stored baseline tensor for the marker ids."""

    def __init__(self, baseline: torch.Tensor | None = None) -> None:
        super().__init__()
        self.baseline = baseline

    def forward(self, embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.baseline is not None and bool((ids == MARKER).all()):
            return self.baseline.expand_as(embedded)
        return embedded


class OriginalRecipe:
    """What the original server computed per text, on the model's own forward.

    ``LayerIntegratedGradients(forward, layer).attribute(...)`` for the
    integrated gradients, then a second pass over the same path for the
    intermediate gradients, as ``LayerIntermediateGradients`` did: evaluate
    the layer for the input and the baseline, concatenate every scaled point
    ``x' + a (x - x')``, push them through the model with a forward hook that
    replaces the layer's output, and ``torch.autograd.grad`` the target logit
    (one batch of ``batch`` steps at a time; the original used all at once).
    """

    def __init__(self, adapter: ClassifierAdapter) -> None:
        self.adapter = adapter
        self.model = adapter.model
        self.layer: torch.nn.Module = adapter.layer  # type: ignore[attr-defined]
        self.swap = Swap()
        self.inputs_embeds = adapter.kind == "inputs_embeds"
        self.keys: tuple[str, ...] = ()
        self._ids: torch.Tensor | None = None
        self.lig = LayerIntegratedGradients(self.forward, self.swap)

    def forward(self, ids: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        """Logits from the model's own forward; the layer output passes the swap."""
        kwargs = dict(zip(self.keys, extras, strict=True))
        real = ids.clamp_min(0)
        if self.inputs_embeds:  # XLNet & co: the word embeddings feed inputs_embeds
            points = self.swap(self.layer(real), ids)
            out = self.model(inputs_embeds=points, **kwargs, **self.adapter.fixed_inputs)  # type: ignore[attr-defined]
        else:
            self._ids = ids
            out = self.model(input_ids=real, **kwargs)
        return logits_of(out)

    @contextmanager
    def _swapped(self) -> Iterator[None]:
        """Route the embeddings module's output through the swap while running."""
        if self.inputs_embeds:
            yield
            return

        def through_swap(_module: Any, _inputs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (self.swap(output[0], self._ids), *output[1:])
            return self.swap(output, self._ids)

        handle = self.layer.register_forward_hook(through_swap)
        try:
            yield
        finally:
            handle.remove()

    def _prepare(self, encoded: EncodedText, baseline_kind: str,
                 baseline_tensor: torch.Tensor | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The extra inputs in a fixed order, and the baseline ids (marker for a tensor)."""
        self.keys = tuple(sorted(encoded.extras))
        self.swap.baseline = baseline_tensor
        if baseline_tensor is None:
            fill = self.adapter.special_token_id(baseline_kind)
        else:
            fill = MARKER
        return tuple(encoded.extras[k] for k in self.keys), torch.full_like(encoded.input_ids, fill)

    def integrated_gradients(self, text: str, *, target: int, n_steps: int, method: str,
                             baseline_kind: str, baseline_tensor: torch.Tensor | None,
                             max_length: int = 512, batch: int | None = None) -> torch.Tensor:
        """Captum LIG attributions ``(1, T, H)`` for the target class."""
        encoded = self.adapter.encode(text, max_length)
        extras, base_ids = self._prepare(encoded, baseline_kind, baseline_tensor)
        with self._swapped():
            return self._lig(encoded.input_ids, base_ids, extras, target, n_steps, method, batch)

    def _lig(self, ids: torch.Tensor, base_ids: torch.Tensor, extras: tuple[torch.Tensor, ...],
             target: int, n_steps: int, method: str, batch: int | None) -> torch.Tensor:
        return self.lig.attribute(
            ids, baselines=base_ids, additional_forward_args=extras, target=target,
            n_steps=n_steps, method=method, internal_batch_size=batch,
        ).detach()

    def run(self, text: str, *, max_length: int, baseline: str, seed: int, n_steps: int,
            method: str, batch: int | None, target: int | None = None) -> dict[str, Any]:
        """The four outputs (CPU float32) plus the target used (the predicted class by default)."""
        from intgrads_zmq.engine.baselines import TOKEN_BASELINES, make_baseline

        encoded = self.adapter.encode(text, max_length)
        ids = encoded.input_ids
        tensor = None
        if baseline not in TOKEN_BASELINES:
            layer_input = self.adapter.layer_output(ids, encoded).float()
            tensor = make_baseline(self.adapter, encoded, baseline, seed, layer_input)
        extras, base_ids = self._prepare(encoded, baseline, tensor)
        with self._swapped():
            if target is None:
                with torch.no_grad():
                    target = int(self.forward(ids, *extras)[0].argmax())
            grads, step_sizes, intermediates = self._intermediate_pass(
                ids, base_ids, extras, target, n_steps, method, batch
            )
            integrated = self._lig(ids, base_ids, extras, target, n_steps, method, batch)
        return {
            "integrated_gradients": integrated.float().cpu(),
            "intermediate_gradients": grads.cpu(),
            "step_sizes": step_sizes,
            "intermediates": intermediates.cpu(),
            "target": target,
        }

    def _layer_value(self, ids: torch.Tensor, extras: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The swap's output for these ids (Captum's ``_forward_layer_eval``)."""
        captured: list[torch.Tensor] = []
        handle = self.swap.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.no_grad():
                self.forward(ids, *extras)
        finally:
            handle.remove()
        return captured[0].detach()

    def _intermediate_pass(self, ids: torch.Tensor, base_ids: torch.Tensor,
                           extras: tuple[torch.Tensor, ...], target: int, n_steps: int,
                           method: str, batch: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        step_sizes_of, alphas_of = approximation_parameters(method)
        steps, alphas = step_sizes_of(n_steps), alphas_of(n_steps)
        x, x0 = self._layer_value(ids, extras), self._layer_value(base_ids, extras)
        scaled = torch.cat([x0 + alpha * (x - x0) for alpha in alphas], dim=0)
        size = batch or n_steps
        grads = [self._gradients(scaled[start:start + size], ids, extras, target)
                 for start in range(0, n_steps, size)]
        return torch.cat(grads), torch.tensor(steps, dtype=torch.float32).view(n_steps, 1), scaled

    def _gradients(self, part: torch.Tensor, ids: torch.Tensor, extras: tuple[torch.Tensor, ...],
                   target: int) -> torch.Tensor:
        points = part.detach().requires_grad_()
        count = points.shape[0]
        handle = self.swap.register_forward_hook(lambda _m, _i, _o: points)
        try:
            with torch.enable_grad():
                logits = self.forward(ids.expand(count, -1),
                                      *(e.expand(count, *e.shape[1:]) for e in extras))
                (grad,) = torch.autograd.grad(torch.unbind(logits[:, target]), points)
        finally:
            handle.remove()
        return grad.detach()


def captum_reference(adapter: ClassifierAdapter, text: str, *, target: int, n_steps: int,
                     method: str, baseline_kind: str, baseline_tensor: torch.Tensor | None,
                     max_length: int = 512) -> torch.Tensor:
    """Captum LIG attributions (1, T, H) for one of our adapters' models."""
    return OriginalRecipe(adapter).integrated_gradients(
        text, target=target, n_steps=n_steps, method=method, baseline_kind=baseline_kind,
        baseline_tensor=baseline_tensor, max_length=max_length,
    )
