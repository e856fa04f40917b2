"""A frozen trunk computed once per example, when only the model's head is trained.

If every trainable tensor sits in the final norm (or an untied output layer), everything before
the final norm is frozen for the whole run: its output for an example never changes. Then the
trunk runs once per example and is kept (hidden size x 4 bytes each), and every contribution only
evaluates the head: the final norm, through the model's own module so that perturbation hooks
see it, and the label-word rows of the output layer.

The head may also include the last block's feed-forward half (its post-attention norm and MLP:
Llama-style and GPT-2 blocks). That half works on each position alone, and the last position is
the only one scored, so the cache point moves to the residual stream after the last block's
attention and the head becomes ``h + mlp(norm(h))``: a few million weights of real 2-D matrices,
which is training features, not only calibration, at nearly the same cost. The loss is the same function of the
weights (up to float rounding, since a cached row was computed in another batch); what changes is
that a contribution costs microseconds instead of two forward passes, so a CPU peer can make
hundreds per round. This is what makes zeroth-order training of a small trainable set practical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (final norm, its base model) by architecture: Llama/Mistral/Qwen-style, GPT-2, GPT-NeoX, OPT
MAX_CACHE_BYTES = 2 << 30  # 2 GiB: SmolLM2 keeps 2.3 KB per example, a 4096-wide model 16 KB
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")
# (blocks, the block's post-attention norm, its MLP) where a block ends in `h + mlp(norm(h))`
_FEED_FORWARD_TAILS = (("model.layers", "post_attention_layernorm", "mlp"), ("transformer.h", "ln_2", "mlp"))


class FrozenTrunk:
    def __init__(self, model: torch.nn.Module, norm_name: str, head_trained: bool, tail: tuple[str, str] | None = None):
        self.model = model
        self.norm = model.get_submodule(norm_name)
        self.norm_name = norm_name
        # (the last block's post-attention norm, its MLP) when they are trained: the cache point moves before them
        self.tail = None if tail is None else (model.get_submodule(tail[0]), model.get_submodule(tail[1]))
        self.tail_names = tail
        self.cache_at = self.norm if self.tail is None else self.tail[0]
        self.head = model.get_output_embeddings()
        self.head_trained = (
            head_trained  # then the head runs as a module (its perturbation hooks fire) on the full vocabulary
        )
        self.cache: dict[int, torch.Tensor] = {}
        self.bytes, self.max_bytes = 0, MAX_CACHE_BYTES

    @classmethod
    def for_params(cls, model: torch.nn.Module, params) -> FrozenTrunk | None:
        """A trunk cache if ``params`` (the trainable tensors) all belong to the final norm or to an
        output layer that shares no tensor with the rest of the model; otherwise None."""
        if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
            return None
        names = dict(model.named_modules())
        norm_name = next((n for n in _FINAL_NORMS if n in names), None)
        if norm_name is None:
            return None
        head = model.get_output_embeddings()
        inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        head_ok = inputs is None or all(p is not q for p in head.parameters() for q in inputs.parameters())
        allowed = {id(p) for p in names[norm_name].parameters()} | (
            {id(p) for p in head.parameters()} if head_ok else set()
        )
        tail = cls._tail(names)
        tail_ids = set() if tail is None else {id(p) for n in tail for p in names[n].parameters()}
        if not params or any(id(p) not in allowed | tail_ids for _, p in params):
            return None
        return cls(
            model,
            norm_name,
            head_trained=any(id(p) in {id(q) for q in head.parameters()} for _, p in params),
            tail=tail if any(id(p) in tail_ids for _, p in params) else None,
        )

    @staticmethod
    def _tail(names: dict) -> tuple[str, str] | None:
        """The last block's (post-attention norm, MLP) names, for the block layouts known to end in
        ``h + mlp(norm(h))``; None for others (then training them means full forwards)."""
        for blocks, norm, mlp in _FEED_FORWARD_TAILS:
            stack = names.get(blocks)
            if isinstance(stack, torch.nn.ModuleList) and len(stack) > 0:
                last = f"{blocks}.{len(stack) - 1}"
                if f"{last}.{norm}" in names and f"{last}.{mlp}" in names:
                    return f"{last}.{norm}", f"{last}.{mlp}"
        return None

    def _fill(self, batch, keys: list[int]) -> dict[int, torch.Tensor]:
        """Run the trunk on the rows whose keys are not cached: the cache point's input (the final
        norm's, or the last block's post-attention norm's) at the last position, kept while the
        cache holds less than ``max_bytes`` (past that, recomputed)."""
        missing = [r for r, k in enumerate(keys) if k not in self.cache]
        if not missing:
            return {}
        rows = torch.tensor(missing, device=batch.input_ids.device)
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        keep = int(mask.sum(-1).max())  # drop columns that are padding in every chosen row
        ids, mask = ids[:, -keep:], mask[:, -keep:]
        seen: dict = {}

        def keep_input(module, args) -> None:  # returns None: the trunk's forward goes on unchanged
            seen["h"] = args[0][:, -1, :].detach().clone()

        handle = self.cache_at.register_forward_pre_hook(keep_input)
        try:
            with torch.no_grad():
                self.model.base_model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0),
                    use_cache=False,
                )
        finally:
            handle.remove()
        fresh = {keys[r]: h for r, h in zip(missing, seen["h"])}
        if self.bytes < self.max_bytes:
            self.cache.update(fresh)
            self.bytes += sum(h.numel() * h.element_size() for h in fresh.values())
        return fresh

    def warm(self, batch) -> None:
        """Cache the trunk's output for every example of ``batch`` not cached yet."""
        self._fill(batch, batch.keys.tolist())

    def class_logits(self, batch, label_token_ids: list[int]) -> torch.Tensor:
        """(B, classes) label-word logits from the cached trunk and the (perturbable) head."""
        keys = batch.keys.tolist()
        fresh = self._fill(batch, keys)
        h = torch.stack([self.cache.get(k, fresh.get(k)) for k in keys]).unsqueeze(1)  # (B, 1, hidden)
        if self.tail is not None:  # the last block's feed-forward half, on the last position only
            norm, mlp = self.tail
            h = h + mlp(norm(h))
        x = self.norm(h)
        if self.head_trained:
            return self.head(x)[:, -1, label_token_ids].float()
        return F.linear(
            x[:, -1, :],
            self.head.weight[label_token_ids],
            None if self.head.bias is None else self.head.bias[label_token_ids],
        ).float()
