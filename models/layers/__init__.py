"""Parts used by more than one architecture of the family, one job per module; no architecture imports another.

- ``ms_deform_attn``: multi-scale deformable attention (Deformable DETR, DINO; RT-DETRv2's per-level points and
  D-FINE's variant without projections) in plain PyTorch
- ``deformable_encoder``: the deformable encoder layer and encoder (Deformable DETR, DINO)
- ``token_positions``: the encoder tokens' reference points, one-box-per-token proposals and RT-DETR's anchors
- ``levels``: feature levels flattened into one token sequence, with valid ratios
- ``input_projections``: backbone maps -> the transformer's levels (projections and extra strided levels)
- ``box_encoding``: ``inverse_sigmoid`` and the sine embeddings of boxes
- ``denoising``: contrastive denoising queries (DINO's; RT-DETR's, with D-FINE's options); ``query_selection``:
  the encoder's top-k tokens
- ``clones``: independent copies of a layer
- ``hybrid_encoder``: RT-DETR's hybrid encoder (AIFI + CCFM) with RT-DETRv2's and D-FINE's blocks
- ``real_time_detector``: backbone -> hybrid encoder -> decoder, the model class of RT-DETRv2 and D-FINE
- ``real_time_transformer``: what RT-DETRv2's and D-FINE's decoders share (memory, anchors, query selection,
  denoising)
- ``fdr``: D-FINE's fine-grained distribution refinement (the weighting function, integral, distance bins)

The matchers (models/matcher.py), set criteria (models/criterion.py), post-processors (models/postprocess.py),
backbones (models/backbone.py) and positional encodings (models/position_encoding.py) are shared the same way.
"""
