"""Parts used by more than one architecture of the family, one job per module; no architecture imports another.

- ``ms_deform_attn``: multi-scale deformable attention (Deformable DETR, DINO) in plain PyTorch
- ``deformable_encoder``: the deformable encoder layer and encoder (Deformable DETR, DINO)
- ``token_positions``: the encoder tokens' reference points and one-box-per-token proposals
- ``levels``: feature levels flattened into one token sequence, with valid ratios
- ``input_projections``: backbone maps -> the transformer's levels (projections and extra strided levels)
- ``box_encoding``: ``inverse_sigmoid`` and the sine embeddings of boxes
- ``denoising``: contrastive denoising queries; ``query_selection``: the encoder's top-k tokens
- ``clones``: independent copies of a layer

The matchers (models/matcher.py), set criteria (models/criterion.py), post-processors (models/postprocess.py),
backbones (models/backbone.py) and positional encodings (models/position_encoding.py) are shared the same way.
"""
