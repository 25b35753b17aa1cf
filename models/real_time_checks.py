"""Flag checks that RT-DETRv2's and D-FINE's builders share (each calls them from its ``check_flags``)."""
import argparse


def check_decoder_levels_and_sizes(args: argparse.Namespace, backbone: str) -> None:
    """What RT-DETRv2's and D-FINE's builders check alike: the decoder's levels against the encoder's, one
    ``--num_points`` per level, ``--eval_idx`` a decoder layer, and training sizes that are multiples of the
    coarsest stride (the fusion concatenates upsampled maps). ``backbone`` names the backbone in the messages."""
    if args.num_feature_levels < len(args.return_idx):
        raise ValueError(f"--num_feature_levels ({args.num_feature_levels}) must be at least the number of "
                         f"--return_idx levels ({len(args.return_idx)})")
    if len(args.num_points) != args.num_feature_levels:
        raise ValueError(f"--num_points gives {len(args.num_points)} levels, --num_feature_levels is "
                         f"{args.num_feature_levels}")
    if max(args.return_idx) > 3:
        raise ValueError(f"--return_idx {args.return_idx}: {backbone} has stages 0..3")
    if not -args.dec_layers <= args.eval_idx < args.dec_layers:
        raise ValueError(f"--eval_idx {args.eval_idx} is not a layer of the {args.dec_layers} decoder layers")
    stride = 2 ** (max(args.return_idx) + 2)
    if args.data_pipeline in (None, "rtdetr"):
        sizes = [args.image_size, *(args.multiscale_sizes or ())]
        if any(size % stride for size in sizes):
            raise ValueError(f"--image_size and --multiscale_sizes must be multiples of {stride} (the backbone's "
                             f"coarsest stride), got {sizes}")
