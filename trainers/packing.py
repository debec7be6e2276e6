"""Prefix-sharing packing of S-GRPO serial groups (issue 20) as pure functions: no TRL, no trainer.

Why: every early-exit member of a serial group is `O_0[:P_i] + exit text + C_i`, a prefix of the group's full rollout
followed by its own tokens. Scored as padded rows, the policy / old-policy / reference passes run over about
`(m/2 + 1) * n + m * (e + a)` tokens for a thought of n tokens, where `n + m * (e + a)` would do: the log-prob of a
prefix token is the same in every member that holds it (same context, same token, same position).

One *packed sequence* holds the members of one serial path (one full rollout O_0) that a batch holds:

    trunk:     prompt + O_0[:T]                          (T = the longest prefix among those members)
    branch i:  O_0[P_i - 1] + exit text + C_i            (one per early-exit member, in row order)

- Every token keeps the position id it has in its own unpacked row (TRL's rows are left-padded and the model numbers
  positions 0..W-1 across the padded row, so these are the padded indices).
- Trunk tokens attend causally inside the trunk; branch i's tokens attend to the trunk tokens before its first token's
  position (`prompt + O_0[:P_i - 1]`) and causally to their own branch. Padding attends only to itself (no empty row).
- The boundary: exit i's first new token (exit_ids[0]) is predicted by the hidden state of O_0[P_i - 1] seen with
  context `prompt + O_0[:P_i - 1]`. The trunk holds that hidden state, but it already predicts O_0[P_i] there. Each
  branch therefore opens with a *copy* of O_0[P_i - 1] (of the last prompt token when P_i = 0) at the same position,
  with the same visible context: its hidden state is the trunk's, mathematically, and it predicts exit_ids[0]. One
  extra token per exit keeps everything in one forward with one label per position and no second LM-head pass.
- Labels are pre-shifted (`shift_labels[q]` = the token that the hidden state at q predicts, -100 where none is
  scored), as TRL's fused LM head accepts them (`model(..., shift_labels=..., fused_lm_head=True)`).
- `gather_index` maps every member row's completion token t back to the packed position whose hidden state scores it,
  so the per-token log-probs / entropies come back in TRL's (rows x completion) layout; autograd sums the gradient of a
  shared prefix token over the members that hold it, exactly as the unpacked rows would.

`regroup_micro_batches` reorders a shuffled generation batch so that each serial path's members are consecutive (in
position order) and whole paths fill the micro-batches; the order of the paths is the shuffle's (first appearance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Columns of the per-row descriptor (`PACK_KEY` in the trainer's batch dict), one row per member.
PATH, IS_FULL, CUT, ROW = range(4)
DESCRIPTOR_COLUMNS = ("path", "is_full", "cut", "row")

# Model types whose transformers 5.17 decoders hand a ready 4D mask / BlockMask straight to attention
# (masking_utils._preprocess_mask_arguments returns it as-is) and number positions from `position_ids`.
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral", "phi3", "qwen3_moe", "qwen2_moe")
SUPPORTED_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass
class PackPlan:
    """Packed sequences for a batch of member rows (S sequences of length L; B rows of C completion tokens)."""

    input_ids: torch.Tensor  # (S, L)
    position_ids: torch.Tensor  # (S, L) the positions the tokens have in their unpacked rows
    segment: torch.Tensor  # (S, L) 0 = trunk, b >= 1 = branch b, -1 = padding
    visible: torch.Tensor  # (S, L) branch tokens: trunk tokens [0, visible) are visible; else 0
    shift_labels: torch.Tensor  # (S, L) token predicted by the hidden state at each position, -100 if none
    gather_index: torch.Tensor  # (B, C) flat index into (S * L) of row b's completion token t
    valid: torch.Tensor  # (B, C) bool: a scored token (inside the row's completion)
    packed_tokens: int  # trunk completion tokens + branch tokens: what goes through the policy after the prompts
    row_tokens: int  # the rows' completion tokens (what the unpacked rows put through the policy)

    def to(self, device) -> PackPlan:
        kw = {k: getattr(self, k).to(device) for k in
              ("input_ids", "position_ids", "segment", "visible", "shift_labels", "gather_index", "valid")}
        return PackPlan(**kw, packed_tokens=self.packed_tokens, row_tokens=self.row_tokens)


def member_descriptor(is_full: Sequence[bool], cut: Sequence[int], members_per_path: int) -> torch.Tensor:
    """Per-row descriptor of a local generation batch in serial-group order (m exits in position order, then the full
    rollout; paths consecutive): (rows x 4) long tensor [path, is_full, cut, row]. `cut` of a full row is ignored."""
    n = len(is_full)
    if len(cut) != n or n % members_per_path:
        raise ValueError(f"{n} rows with {len(cut)} cuts are not whole serial paths of {members_per_path} members")
    rows = torch.arange(n)
    return torch.stack([rows // members_per_path, torch.tensor([int(f) for f in is_full]),
                        torch.tensor([int(c) for c in cut]), rows], dim=1).long()


def plan_serial_packing(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        descriptor: torch.Tensor, pad_token_id: int = 0, check: bool = True) -> PackPlan:
    """Build the packed sequences for TRL-layout rows (`input_ids` = left-padded prompt + right-padded completion,
    the last `logits_to_keep` columns being the completion).

    Rows with an empty completion mask (e.g. TRL's `mask_truncated_completions`) are left out; their log-probs come
    back 0, as TRL's unpacked pass gives them. `check` verifies that the members of a path share the prompt and the
    rollout prefix token by token (a mismatch means a wrong descriptor and raises).
    """
    ids = input_ids.detach().cpu()
    am = attention_mask.detach().cpu()
    desc = descriptor.detach().cpu().long()
    B, W = ids.shape
    C = int(logits_to_keep)
    P = W - C
    if desc.shape != (B, 4):
        raise ValueError(f"descriptor must be ({B}, 4), got {tuple(desc.shape)}")
    prompt_len = am[:, :P].sum(dim=1).tolist()
    comp_len = am[:, P:].sum(dim=1).tolist()
    paths: dict[int, list[int]] = {}
    for r in range(B):
        if comp_len[r] > 0:
            paths.setdefault(int(desc[r, PATH]), []).append(r)

    seqs = []  # per packed sequence: (ids, positions, segment, visible, labels)
    gather = torch.zeros(B, C, dtype=torch.long)
    valid = torch.zeros(B, C, dtype=torch.bool)
    branch_of: dict[int, int] = {}  # exit row -> where its branch starts in its packed sequence
    row_map: dict[int, tuple[int, torch.Tensor]] = {}  # row -> (sequence index, packed position of each token)
    packed_tokens = 0
    for members in paths.values():
        lp = prompt_len[members[0]]
        prefix = {r: (comp_len[r] if desc[r, IS_FULL] else int(desc[r, CUT])) for r in members}
        for r in members:
            if prompt_len[r] != lp:
                raise ValueError(f"row {r} of serial path {int(desc[r, PATH])} has another prompt length")
            if not desc[r, IS_FULL] and not 0 <= prefix[r] < comp_len[r]:
                raise ValueError(f"exit row {r}: cut {prefix[r]} outside its completion of {comp_len[r]} tokens")
        if lp < 1:
            raise ValueError(f"serial path {int(desc[members[0], PATH])} has an empty prompt: nothing scores its first token")
        src = max(members, key=lambda r: prefix[r])
        T = prefix[src]
        start = P - lp  # the trunk's first token sits at padded index P - lp in every member row
        trunk = ids[src, start:P + T]
        if check:
            for r in members:
                n = lp + prefix[r]
                if not torch.equal(ids[r, start:start + n], trunk[:n]):
                    raise ValueError(f"row {r} does not share the prompt and rollout prefix of serial path "
                                     f"{int(desc[r, PATH])}: the packing descriptor is wrong")
        s = len(seqs)
        zeros = torch.zeros(len(trunk), dtype=torch.long)
        parts_ids, parts_pos, parts_seg, parts_vis = [trunk], [torch.arange(start, P + T)], [zeros], [zeros]
        labels = torch.full((len(trunk),), -100, dtype=torch.long)
        if T > 0:
            labels[lp - 1:lp + T - 1] = trunk[lp:]
        parts_lab = [labels]
        offset = len(trunk)
        packed_tokens += T
        b = 0
        for r in members:
            if desc[r, IS_FULL]:  # the full rollout lies in the trunk
                continue
            b += 1
            cut = prefix[r]
            br = ids[r, P + cut - 1:P + comp_len[r]]  # the copy of the last shared token, exit text, answer
            n_br = len(br)
            parts_ids.append(br)
            parts_pos.append(torch.arange(P + cut - 1, P + comp_len[r]))
            parts_seg.append(torch.full((n_br,), b))
            parts_vis.append(torch.full((n_br,), lp + cut - 1))
            lab = torch.full((n_br,), -100, dtype=torch.long)
            lab[:-1] = br[1:]
            parts_lab.append(lab)
            branch_of[r] = offset
            offset += n_br
            packed_tokens += n_br
        seqs.append((torch.cat(parts_ids), torch.cat(parts_pos), torch.cat(parts_seg), torch.cat(parts_vis),
                     torch.cat(parts_lab)))
        for r in members:
            t = torch.arange(comp_len[r])
            q = lp + t - 1  # trunk: O_0[t] is scored by the hidden state just before it
            if r in branch_of:
                cut = prefix[r]
                q = torch.where(t < cut, q, branch_of[r] + (t - cut))  # the copy's hidden state scores t = cut
            row_map[r] = (s, q)

    if not seqs:  # no scored row: one dummy token keeps the forward (ZeRO-3 needs every rank to run it)
        seqs.append((ids[0, W - 1:W], torch.zeros(1, dtype=torch.long), torch.zeros(1), torch.zeros(1),
                     torch.full((1,), -100, dtype=torch.long)))
    L = max(len(x[0]) for x in seqs)
    S = len(seqs)
    out_ids = torch.full((S, L), pad_token_id, dtype=torch.long)
    out_pos = torch.zeros(S, L, dtype=torch.long)
    out_seg = torch.full((S, L), -1, dtype=torch.long)
    out_vis = torch.zeros(S, L, dtype=torch.long)
    out_lab = torch.full((S, L), -100, dtype=torch.long)
    for s, (a, p, g, v, lab) in enumerate(seqs):
        n = len(a)
        out_ids[s, :n], out_pos[s, :n], out_seg[s, :n], out_vis[s, :n], out_lab[s, :n] = a, p, g.long(), v.long(), lab
    for r, (s, q) in row_map.items():
        gather[r, :len(q)] = s * L + q
        valid[r, :len(q)] = True
    return PackPlan(out_ids, out_pos, out_seg, out_vis, out_lab, gather, valid, packed_tokens, int(sum(comp_len)))


def allowed(q_seg, k_seg, q_idx, k_idx, q_vis):
    """The prefix-sharing rule (elementwise, broadcastable; also FlexAttention's mask_mod body): same segment and
    causal, or a branch query looking at the trunk before its copy token; padding sees itself only."""
    same = (q_seg == k_seg) & (k_idx <= q_idx) & (q_seg >= 0)
    trunk = (q_seg > 0) & (k_seg == 0) & (k_idx < q_vis)
    return same | trunk | (q_idx == k_idx)


def dense_mask(plan: PackPlan, kind: str = "bool", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(S, 1, L, L) mask for transformers' SDPA ('bool': True = attend) or eager attention ('additive': 0 / min)."""
    S, L = plan.segment.shape
    idx = torch.arange(L, device=plan.segment.device)
    m = allowed(plan.segment[:, :, None], plan.segment[:, None, :], idx[None, :, None], idx[None, None, :],
                plan.visible[:, :, None])
    m = m[:, None]
    if kind == "bool":
        return m
    if kind == "additive":
        zero = torch.zeros((), dtype=dtype, device=m.device)
        return torch.where(m, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=m.device))
    raise ValueError(f"kind must be 'bool' or 'additive', got {kind!r}")


def block_mask(plan: PackPlan, num_heads: int | None = None, compile: bool = False):
    """FlexAttention BlockMask of the same rule (for models loaded with attn_implementation='flex_attention')."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, vis = plan.segment, plan.visible
    S, L = seg.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(seg[b, q_idx], seg[b, kv_idx], q_idx, kv_idx, vis[b, q_idx])

    return create_block_mask(mask_mod, S, None, L, L, device=seg.device, _compile=compile)


def scatter_to_rows(packed: torch.Tensor, plan: PackPlan) -> torch.Tensor:
    """(S, L) per-position values (log-probs, entropies) -> (B, C) member layout; 0 outside the completions."""
    flat = packed.reshape(-1)
    out = flat[plan.gather_index.reshape(-1)].view_as(plan.gather_index)
    return torch.where(plan.valid, out, torch.zeros_like(out))


# ------------------------------------------------------------------------------------------- micro-batches
def _cat(values: list):
    first = values[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return first if first.ndim == 0 else torch.cat(values, dim=0)
    return [x for v in values for x in v]


def _take(value, index: torch.Tensor):
    if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
        return value
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    return [value[i] for i in index.tolist()]


def regroup_order(descriptor: torch.Tensor) -> torch.Tensor:
    """Row order that puts each serial path's members together, in their original (position) order, paths ordered by
    their first appearance in `descriptor`'s current (shuffled) order."""
    desc = descriptor.detach().cpu().long()
    first: dict[int, int] = {}
    for p in desc[:, PATH].tolist():
        first.setdefault(p, len(first))
    rank = torch.tensor([first[p] for p in desc[:, PATH].tolist()], dtype=torch.long)
    key = rank * (int(desc[:, ROW].max()) + 1) + desc[:, ROW]
    return torch.argsort(key)


def regroup_micro_batches(batches: list[dict], key: str) -> list[dict]:
    """Re-split TRL's shuffled micro-batches (equal sizes) so serial paths are consecutive and in member order.
    Scalars (0-dim tensors) and None values are kept; tensors and lists are reordered along the first dimension."""
    if not batches or batches[0].get(key) is None:
        return batches
    n_chunks = len(batches)
    merged = {k: _cat([b[k] for b in batches]) for k in batches[0]}
    order = regroup_order(merged[key])
    merged = {k: _take(v, order) for k, v in merged.items()}
    size = len(order) // n_chunks
    out = []
    for i in range(n_chunks):
        sl = slice(i * size, (i + 1) * size)
        out.append({k: (v if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0) else v[sl])
                    for k, v in merged.items()})
    return out


def attention_unsupported_reason(attn_implementation: str | None) -> str | None:
    """Why this attention kernel cannot score packed serial groups (None when it can): it must honour a custom 4D
    mask / BlockMask."""
    if attn_implementation not in SUPPORTED_ATTENTION:
        return (f"attn_implementation {attn_implementation!r} ignores a prefix-sharing 4D mask "
                f"(supported: {', '.join(SUPPORTED_ATTENTION)})")
    return None


def packing_unsupported_reason(config, attn_implementation: str | None) -> str | None:
    """Why a model cannot be scored packed (None when it can): the attention kernel must honour a custom 4D mask /
    BlockMask, and no layer may rely on a mask the packed one would replace (sliding windows)."""
    model_type = getattr(config, "model_type", None)
    reason = attention_unsupported_reason(attn_implementation)
    if reason is not None:
        return reason
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (f"model type {model_type!r} is not one whose attention is known to take a custom 4D mask "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if any(t != "full_attention" for t in layer_types):
            return "the model has sliding-window / non-full attention layers, which a custom 4D mask would override"
    elif getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention, which a custom 4D mask would override"
    return None
