"""Compare two pictures of digits with a model: the shipped best one, or your own.

    python predict.py <first image> <second image>                    # PNG or JPEG; the shipped best model
    python predict.py --model ws_aux <first image> <second image>     # the shipped study model
    python predict.py <checkpoint or run folder> <first image> <second image>
    python predict.py --mnist-test 0 1                                # digits 0 and 1 of the MNIST test set

Prints one line, e.g. ``first: 2 (p=0.99)  second: 7 (p=0.98)  2 <= 7: yes (p=0.999)``;
with --json one object with the keys first, second, first_probs, second_probs, le, p_le.
A light background is inverted (noted on stderr). See digitpairs/inference/predict.py.
"""

import argparse
import json
import sys
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare two digit images with a digitpairs model: is the first digit <= the second?",
        epilog="examples: python predict.py examples/two.png examples/seven_black_on_white.png  (the shipped best "
        "model); python predict.py --model ws_aux a.png b.png; python predict.py outputs/runs/<time> a.png b.png",
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[checkpoint] image",
        help="the first and the second image (PNG or JPEG), after an optional checkpoint or run folder",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="beyond (the shipped best model, the default), ws_aux (the shipped study model), "
        "or a checkpoint file or run folder",
    )
    parser.add_argument(
        "--mnist-test",
        nargs=2,
        type=int,
        metavar=("I", "J"),
        help="use test-pool digits I and J of --source instead of image files",
    )
    parser.add_argument("--source", default="auto", help="data source for --mnist-test (auto, idx, torchvision)")
    parser.add_argument(
        "--root",
        default="data/mnist",
        help="data folder for --mnist-test, relative to the project (default: data/mnist)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the human line")
    return parser.parse_args(argv)


def split_args(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``(model, images)``: a leading checkpoint among the positional arguments (three of
    them, one with ``--mnist-test``, or a ``.ckpt`` file or folder first) is the model, as
    ``--model`` would give it.

    Raises:
        ConfigError: a checkpoint given twice, or a count of images that is not two (none
            with ``--mnist-test``).
    """
    from digitpairs.inference.pretrained import DEFAULT
    from digitpairs.utils.errors import ConfigError

    images = list(args.args)
    wanted = 0 if args.mnist_test else 2
    model = args.model
    looks_like_model = bool(images) and (images[0].endswith(".ckpt") or Path(images[0]).is_dir())
    if len(images) == wanted + 1 or looks_like_model:
        if model is not None:
            raise ConfigError("--model", model, "no second model: a checkpoint is also given before the images")
        model = images.pop(0)
    if len(images) != wanted:
        allowed = "two image files, or --mnist-test I J"
        if args.mnist_test:
            allowed = "no image files together with --mnist-test"
        raise ConfigError("image", " ".join(images) or "(none)", allowed)
    return model or DEFAULT, images


def main(argv: list[str]) -> int:
    args = parse(argv)
    from digitpairs.utils.errors import ConfigError, exit_with
    from digitpairs.utils.io import project_path

    try:
        model_arg, images = split_args(args)
        from digitpairs.inference.predict import (
            check_answer,
            compare,
            human_line,
            load_digit,
            load_model,
            mnist_test_digit,
        )
        from digitpairs.inference.pretrained import resolve_model

        model_file = str(resolve_model(model_arg))
        model, mean, std = load_model(model_file)
        if args.mnist_test:
            digits = [mnist_test_digit(i, args.source, str(project_path(args.root))) for i in args.mnist_test]
        else:
            names = ("first_image", "second_image")
            digits = [load_digit(path, name) for path, name in zip(images, names, strict=True)]
    except ConfigError as err:
        exit_with(str(err), 2)
    for name, digit in zip(("first", "second"), digits, strict=True):
        if digit.inverted:
            print(f"note: the {name} image has a light background: inverted to a white digit on black", file=sys.stderr)
    try:
        result = check_answer(compare(model, digits[0].image, digits[1].image, mean, std), "checkpoint", model_file)
    except ConfigError as err:
        exit_with(str(err), 2)
    print(json.dumps(result, allow_nan=False) if args.json else human_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
