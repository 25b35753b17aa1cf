"""DETR's encoder-decoder transformer (Carion et al. 2020), numerically the official one.

Differences from ``torch.nn.Transformer``: positional encodings are added to queries and keys at every
attention layer, the decoder has no causal mask and returns every layer's normalised output.
Sequences are sequence-first: ``[L, B, C]``.

Attention runs through ``scaled_dot_product_attention`` where the weights are not needed (models/attention_weights.py
says where): the same attention as the official code up to floating-point rounding. A layer whose ``need_weights``
is True (``need_attention_weights=True``, or set on one layer by a tool that reads the maps through a forward hook,
as tools/analysis/visualize_attention.py does) computes and returns them as the official code does.
"""
import torch
from torch import Tensor, nn

from models.activation import activation_fn
from models.attention_weights import computes_weights, has_forward_hooks
from models.layers.clones import clones


class Transformer(nn.Module):
    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False, return_intermediate_dec: bool = False,
                 need_attention_weights: bool = False):
        """``need_attention_weights``: every attention layer computes its head-averaged weights, as the official
        code does (slower, the same outputs up to rounding; see the module docstring)."""
        super().__init__()
        encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before,
                                                need_attention_weights)
        encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before,
                                                need_attention_weights)
        self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model),
                                          return_intermediate=return_intermediate_dec)
        self.d_model = d_model
        self.nhead = nhead
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor,
                query_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """src ``[B, C, H, W]``, mask ``[B, H, W]`` (True on padding), query_embed ``[Q, C]``, pos_embed like src,
        query_mask ``[Q, Q]`` (True where query i may not attend to query j in decoder self-attention) or None.

        Returns decoder outputs ``[L, B, Q, C]`` (L = 1 unless intermediate outputs are on) and memory ``[B, C, H, W]``.
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        tgt = torch.zeros_like(query_embed)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(tgt, memory, tgt_mask=query_mask, memory_key_padding_mask=mask, pos=pos_embed,
                          query_pos=query_embed)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                pos: Tensor | None = None) -> Tensor:
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, pos=pos)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    def __init__(self, decoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None,
                 return_intermediate: bool = False):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, pos: Tensor | None = None,
                query_pos: Tensor | None = None) -> Tensor:
        """Returns ``[L, Q, B, C]``: every layer's normed output if ``return_intermediate``, else the last (L = 1)."""
        output = tgt
        intermediate = []
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask,
                           memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)
            if self.return_intermediate:
                intermediate.append(self.norm(output))
        if self.norm is not None:
            output = self.norm(output)
            if self.return_intermediate:
                intermediate[-1] = output
        if self.return_intermediate:
            return torch.stack(intermediate)
        return output.unsqueeze(0)


def _with_pos(tensor: Tensor, pos: Tensor | None) -> Tensor:
    return tensor if pos is None else tensor + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward; post-norm by default, pre-norm with ``normalize_before``. ``need_weights``:
    the attention also computes its weights (see the module docstring)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False, need_weights: bool = False):
        super().__init__()
        self.need_weights = need_weights
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def _maps_read(self) -> bool:
        """Whether a forward hook reads the attention maps (never in TorchScript, which has no hooks)."""
        if torch.jit.is_scripting():
            return False
        return self._hooked()

    @torch.jit.unused
    def _hooked(self) -> bool:
        return has_forward_hooks(self.self_attn)

    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                pos: Tensor | None = None) -> Tensor:
        need_weights = computes_weights(self.need_weights or self._maps_read(), self.training, src.device)
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            src2 = self.self_attn(q, k, value=src2, attn_mask=src_mask, key_padding_mask=src_key_padding_mask,
                                  need_weights=need_weights)[0]
            src = src + self.dropout1(src2)
            return src + self.dropout2(self._feed_forward(self.norm2(src)))
        q = k = _with_pos(src, pos)
        src2 = self.self_attn(q, k, value=src, attn_mask=src_mask, key_padding_mask=src_key_padding_mask,
                              need_weights=need_weights)[0]
        src = self.norm1(src + self.dropout1(src2))
        return self.norm2(src + self.dropout2(self._feed_forward(src)))


class TransformerDecoderLayer(nn.Module):
    """Self-attention over queries, cross-attention to the encoder memory, feed-forward. ``need_weights``: both
    attentions also compute their weights (a forward hook on ``multihead_attn`` then sees them as its output[1])."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False, need_weights: bool = False):
        super().__init__()
        self.need_weights = need_weights
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def _maps_read(self) -> bool:
        """Whether a forward hook reads the attention maps (never in TorchScript, which has no hooks)."""
        if torch.jit.is_scripting():
            return False
        return self._hooked()

    @torch.jit.unused
    def _hooked(self) -> bool:
        return has_forward_hooks(self.self_attn, self.multihead_attn)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, pos: Tensor | None = None,
                query_pos: Tensor | None = None) -> Tensor:
        need_weights = computes_weights(self.need_weights or self._maps_read(), self.training, tgt.device)
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt2 = self.self_attn(q, k, value=tgt2, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                                  need_weights=need_weights)[0]
            tgt = tgt + self.dropout1(tgt2)
            tgt2 = self.multihead_attn(query=_with_pos(self.norm2(tgt), query_pos), key=_with_pos(memory, pos),
                                       value=memory, attn_mask=memory_mask,
                                       key_padding_mask=memory_key_padding_mask, need_weights=need_weights)[0]
            tgt = tgt + self.dropout2(tgt2)
            return tgt + self.dropout3(self._feed_forward(self.norm3(tgt)))
        q = k = _with_pos(tgt, query_pos)
        tgt2 = self.self_attn(q, k, value=tgt, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                              need_weights=need_weights)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.multihead_attn(query=_with_pos(tgt, query_pos), key=_with_pos(memory, pos), value=memory,
                                   attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
                                   need_weights=need_weights)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self._feed_forward(tgt)))


def build_transformer(args) -> Transformer:
    """DETR's transformer from the flags (the official ``build_transformer``), intermediate decoder outputs kept."""
    return Transformer(d_model=args.hidden_dim, dropout=args.dropout, nhead=args.nheads,
                       dim_feedforward=args.dim_feedforward, num_encoder_layers=args.enc_layers,
                       num_decoder_layers=args.dec_layers, normalize_before=args.pre_norm,
                       return_intermediate_dec=True)
