"""``slimkit profile MODEL``: the per-layer table of params, MACs, other ops and bytes."""

from __future__ import annotations

import argparse

from slimkit.cli._common import (
    CommandError,
    add_model_args,
    check_output_file,
    count,
    input_shape_for,
    load_model,
    print_profile,
    shape,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("profile", help="per-layer params, MACs, bytes of a model")
    add_model_args(parser)
    parser.add_argument("--input-shape", type=shape, help="C,H,W of one sample, or L (tokens) for a language model "
                        "(default: the model's registered shape)")
    parser.add_argument("--bits", type=count(1, 64), default=32, help="bits per stored value for the bytes column")
    parser.add_argument("--json", dest="json_path", help="also write the profile as JSON to this file")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from slimkit.analysis import profile
    from slimkit.models import InputSpec, check_fits, check_input_memory, input_spec

    if args.force and not args.json_path:
        raise CommandError("--force replaces an existing --json file, and no --json is given: add --json FILE, or "
                           "drop --force")
    if args.json_path:  # before any work: never the checkpoint, a run's own file, or an existing file unasked
        check_output_file(args.json_path, "--json", force=args.force, inputs=(args.checkpoint,))
    if args.input_shape is not None:  # float32 pixels (token ids are capped by the model's positions below)
        check_input_memory(args.input_shape, "--input-shape")
    model = load_model(args.model, args.checkpoint)
    found = input_spec(args.model)
    if found is not None and found.is_tokens:  # a language model (hf: spec, model folder, llama_tiny): token ids
        if args.input_shape is not None and len(args.input_shape) != 1:
            raise CommandError(f"{args.model} takes token ids: --input-shape is one number, the sequence length "
                               f"(got {','.join(map(str, args.input_shape))})")
        length = args.input_shape[0] if args.input_shape else found.shape[0]
        config = getattr(model, "config", None)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(limit, int) and length > limit:
            raise CommandError(f"--input-shape {length}: {args.model} has positions for {limit} tokens: give a "
                               f"length ≤ {limit}")
        example = InputSpec((length,), "int64", found.vocab_size).example(1)
    else:
        example = torch.zeros(1, *input_shape_for(args.model, args.input_shape))
    check_fits(model, example, label=args.model, data="--input-shape")
    prof = profile(model, example, dtype_bits=args.bits)
    print_profile(prof, title=f"{args.model}")
    if args.json_path:
        write_json(args.json_path, prof.to_dict())
    return 0
